"""RGB-D sources for depth pretraining (stage A).

Examples are dicts: `image (H, W, 3) float32 in [0, 1]`, `depth (H, W, 1) float32` (the file's
unit times `depth_scale`; invalid pixels 0), `valid (H, W, 1) float32` (1 where depth is finite
and > 0) and `name` (str).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from radblur_jax.data import image_io
from radblur_jax.data.image_io import DataError
from radblur_jax.data.sources import deblur
from radblur_jax.data.sources.paired import by_stem, images_by_stem


def depth_fields(depth: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """`depth (H, W)` in the file's unit -> `depth (H, W, 1)` times `scale` (invalid pixels 0)
    and `valid (H, W, 1)` float32 (1 where depth is finite and > 0)."""
    depth = np.asarray(depth, np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    depth = np.where(valid, depth * scale, 0.0).astype(np.float32)
    return {"depth": depth[:, :, None], "valid": valid.astype(np.float32)[:, :, None]}


class DepthFolderSource:
    """`root/{image_dir}/<stem>.{png,jpg,...}` + `root/{depth_dir}/<stem>.{npy,png,pfm}`.

    16-bit PNG depth is read as raw integers; pass `depth_scale` (e.g. 1e-3 for millimetres).
    A missing counterpart is an error naming the file (`skip_bad=True`: dropped with a warning).
    """

    def __init__(self, root: str, *, image_dir: str = "image", depth_dir: str = "depth",
                 depth_scale: float = 1.0, skip_bad: bool = False):
        root = os.path.expanduser(str(root))
        if not os.path.isdir(root):
            raise DataError(f"{root}: depth_folder root directory not found")
        images = images_by_stem(os.path.join(root, image_dir))
        ddir = os.path.join(root, depth_dir)
        if not os.path.isdir(ddir):
            raise DataError(f"{ddir}: directory not found")
        depths = by_stem([os.path.join(ddir, f) for f in sorted(os.listdir(ddir))
                          if f.lower().endswith(image_io.DEPTH_EXTS)])
        self.items: list[tuple[str, str, str]] = []
        self.num_bad = 0
        for stem in sorted(set(images) | set(depths)):
            if stem in images and stem in depths:
                self.items.append((images[stem], depths[stem], os.path.basename(images[stem])))
                continue
            have = images.get(stem) or depths[stem]
            msg = f"{have}: no {'depth map' if stem in images else 'image'} counterpart for {stem}"
            if not skip_bad:
                raise DataError(msg)
            self.num_bad += 1
            warnings.warn(f"depth_folder: skipped: {msg}", stacklevel=2)
        if not self.items:
            raise DataError(f"{root}: no image/depth pairs found; expected {image_dir}/ + "
                               f"{depth_dir}/ with matching file stems")
        self.depth_scale = depth_scale

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path, depth_path, name = self.items[int(index)]
        image, depth = image_io.read_image(img_path), image_io.read_depth(depth_path)
        image_io.check_same_size([image, depth], [img_path, depth_path])
        return {"image": image, **depth_fields(depth, self.depth_scale), "name": name}


class SyntheticDepthSource:
    """The built-in synthetic set as RGB-D: the sharp frame and its depth map."""

    def __init__(self, root: str, split: str = "train", *, skip_bad: bool = False):
        self.pairs = deblur.synthetic(root, split, with_depth=True, skip_bad=skip_bad)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.pairs[index]
        return {"image": ex["sharp"], **depth_fields(ex["depth"][:, :, 0], 1.0),
                "name": ex["name"]}
