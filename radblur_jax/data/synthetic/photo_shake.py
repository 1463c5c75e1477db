"""Real photographs blurred by camera shake: a small held-out check set in the paired_folder layout.

Each photograph that ships with scikit-image is treated as the whole scene: one opaque
fronto-parallel plane at the near depth, so the camera trajectory of ``render.sample_trajectory``
moves every pixel alike (uniform blur, ``tx + px`` pixels of shift plus the roll). The blur is the
mean of the warped sub-frames in linear light (``render.render_layers``), with the same
highlight boost (``scene.boost_highlights``) and Poisson-Gaussian noise (``render.add_noise``)
as the synthetic set; the sharp image is the centre crop of the photo. No light discs are added:
only the photo's own highlights saturate.

    from radblur_jax.data.synthetic.photo_shake import shake_pair, write_photo_shake_set
    pair = shake_pair(photo, np.random.default_rng(0), SyntheticParams(height=256, width=256))
    pair["blur"], pair["sharp"]   # (256, 256, 3) float32 sRGB in [0, 1]
    write_photo_shake_set("data/photo_shake", size=256, per_photo=4, seed=0)

Layout written (read it with ``make_source({"name": "paired_folder", "root": ROOT})``):

    ROOT/input/<photo>_<k>.png    8-bit sRGB, blurred
    ROOT/target/<photo>_<k>.png   8-bit sRGB, sharp (centre crop of the photo)
    ROOT/manifest.json            photos, seeds, params, per-pair trajectory summary
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from radblur_jax.data.synthetic.render import (
    SyntheticParams,
    _margin,
    add_noise,
    render_layers,
    sample_trajectory,
)
from radblur_jax.data.synthetic.scene import Layer, boost_highlights, linear_to_srgb, srgb_to_linear
from radblur_jax.data.synthetic.textures import _skimage_data_dir, texture_source
from radblur_jax.data.synthetic.writer import PNG_COMPRESSION, _publish, _to_u8

FORMAT = "radblur_jax.photo_shake"
VERSION = 1
# Photographs of everyday scenes from skimage/data (camera.png is grayscale, expanded to RGB).
# All but motorcycle_right.png are also in textures.PHOTO_NAMES: the synthetic set cuts its
# textures from the same pixels (see docs/datasets.md); pure textures (brick, grass, gravel, ...)
# and non-camera images (hubble_deep_field, retina, moon, microscopy) are left out.
PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_right.png",
          "rocket.jpg")
DEFAULT_SIZE, DEFAULT_PER_PHOTO, DEFAULT_SEED = 256, 4, 0


def load_photo(name: str) -> np.ndarray:
    """Photo ``name`` from the installed ``skimage/data``: ``(H, W, 3)`` float32 sRGB in [0, 1]."""
    from PIL import Image

    data_dir = _skimage_data_dir()
    if data_dir is None:
        raise FileNotFoundError("scikit-image is not installed: the photo-shake set needs the "
                                "photographs in its skimage/data folder")
    path = data_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: photo not found in this scikit-image install")
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _centre_window(photo: np.ndarray, height: int, width: int, margin: int) -> np.ndarray:
    """The ``(height + 2 margin, width + 2 margin, 3)`` window centred on the photo's centre crop;
    rows/columns beyond the photo are mirrored (only the margin can reach them)."""
    ph, pw = photo.shape[:2]
    y0, x0 = (ph - height) // 2 - margin, (pw - width) // 2 - margin
    y1, x1 = y0 + height + 2 * margin, x0 + width + 2 * margin
    pad = (max(-y0, 0), max(y1 - ph, 0), max(-x0, 0), max(x1 - pw, 0))
    window = photo[max(y0, 0):min(y1, ph), max(x0, 0):min(x1, pw)]
    if any(pad):
        window = cv2.copyMakeBorder(window, *pad, cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(window, np.float32)


def shake_photo(photo_rgb: np.ndarray, trajectory: np.ndarray, height: int, width: int,
                near: float = 1.0, saturation: tuple[float, float] = (1.0, 1.0)
                ) -> tuple[np.ndarray, np.ndarray]:
    """Blur the centre ``height x width`` crop of a photo along a given camera trajectory.

    ``photo_rgb``: ``(H, W, 3)`` sRGB, float in [0, 1] or uint8, at least ``height x width``.
    ``trajectory``: ``(T, 5)`` (see ``render.sample_trajectory``), zero middle row; the photo is
    one plane at depth ``near``. ``saturation``: ``(threshold, gain)`` of ``boost_highlights``.
    Returns blur, sharp: ``(height, width, 3)`` float32 linear light, clipped to [0, 1].
    """
    photo = np.asarray(photo_rgb)
    photo = photo.astype(np.float32) / 255.0 if photo.dtype == np.uint8 else photo
    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"shake_photo: expected an (H, W, 3) photo, got shape {photo.shape}")
    if photo.shape[0] < height or photo.shape[1] < width:
        raise ValueError(f"shake_photo: photo {photo.shape[0]}x{photo.shape[1]} is smaller than "
                         f"the crop {height}x{width}")
    margin = _margin(trajectory, height, width)
    window = _centre_window(photo, height, width, margin)
    colour = boost_highlights(srgb_to_linear(window), *saturation)
    plane = Layer(np.ascontiguousarray(colour, np.float32),
                  np.ones(window.shape[:2], np.float32), -margin, -margin, float(near), True)
    blur, sharp = render_layers([plane], trajectory, height, width, near)
    return np.clip(blur, 0.0, 1.0), np.clip(sharp, 0.0, 1.0)


def shake_pair(photo_rgb: np.ndarray, rng: np.random.Generator | int | np.random.SeedSequence,
               params: SyntheticParams = SyntheticParams()) -> dict:
    """One blurred/sharp pair from a photo with a random camera-shake trajectory.

    Draws like ``render.render_pair`` (trajectory, saturation, noise; no light discs), with the
    photo as a single plane at ``params.depth_range[0]``: blur extent up to
    ``(max_shift + pan_shift) * width`` pixels plus the roll. Crop: ``params.height x width``
    from the photo's centre. Same seed -> same arrays.
    Returns ``blur``, ``sharp``: ``(H, W, 3)`` float32 sRGB in [0, 1]; ``trajectory``:
    ``(T, 5)`` float32; ``saturated``, ``noisy``: bool.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    trajectory = sample_trajectory(rng, params)
    saturate = rng.random() < params.saturation_prob
    gain = rng.uniform(*params.saturation_gain)
    saturation = (params.saturation_threshold, gain) if saturate else (1.0, 1.0)
    blur, sharp = shake_photo(photo_rgb, trajectory, params.height, params.width,
                              params.depth_range[0], saturation)
    noisy = rng.random() < params.noise_prob
    shot, read = rng.uniform(0.0, params.shot_noise), rng.uniform(0.0, params.read_noise)
    if noisy:
        blur = add_noise(rng, blur, shot, read)
    return {"blur": linear_to_srgb(blur), "sharp": linear_to_srgb(sharp),
            "trajectory": trajectory, "saturated": bool(saturate), "noisy": bool(noisy)}


def pair_seed(seed: int, photo_index: int, k: int) -> np.random.SeedSequence:
    """Seed of crop ``k`` of photo ``photo_index`` (its index in the photo list)."""
    return np.random.SeedSequence(int(seed), spawn_key=(int(photo_index), int(k)))


def _blur_extent(trajectory: np.ndarray, height: int, width: int) -> float:
    """Largest pixel displacement between two sub-frames (translation + pan + roll at a corner)."""
    shift = trajectory[:, :2] + trajectory[:, 2:4]
    spread = float(np.linalg.norm(shift[:, None] - shift[None], axis=-1).max())
    roll = float(np.ptp(trajectory[:, 4])) * 0.5 * float(np.hypot(height, width))
    return spread + roll


def _write_png(path: Path, rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(_to_u8(rgb), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]):
        raise OSError(f"{path}: cv2.imwrite failed")


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def write_photo_shake_set(root: str | os.PathLike, *, size: int | tuple[int, int] = DEFAULT_SIZE,
                          per_photo: int = DEFAULT_PER_PHOTO, seed: int = DEFAULT_SEED,
                          photos: tuple[str, ...] = PHOTOS,
                          params: SyntheticParams | None = None) -> Path:
    """Write ``per_photo`` shaken crops of each photo at ``root`` (paired_folder layout) atomically.

    ``size``: crop ``H`` or ``(H, W)``; ``params``: trajectory/noise/saturation settings (default
    ``SyntheticParams()``; its height/width are replaced by ``size``). Crop ``k`` of photo ``i`` is
    drawn from ``pair_seed(seed, i, k)``. Refuses an existing ``root``; built in a temporary folder
    beside it and renamed into place. Returns ``root`` as an absolute Path.
    """
    height, width = _as_size(size)
    params = dataclasses.replace(params or SyntheticParams(), height=height, width=width)
    if per_photo < 1 or not photos:
        raise ValueError("write_photo_shake_set: per_photo must be >= 1 and photos non-empty")
    root = Path(root).expanduser().absolute()
    if root.exists():
        raise FileExistsError(f"{root}: already exists; choose a new folder")
    images = {name: load_photo(name) for name in photos}
    for name, img in images.items():
        if img.shape[0] < height or img.shape[1] < width:
            raise ValueError(f"{name}: photo {img.shape[0]}x{img.shape[1]} is smaller than the "
                             f"crop {height}x{width}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pairs = []
    try:
        (tmp / "input").mkdir(parents=True)
        (tmp / "target").mkdir()
        for i, name in enumerate(photos):
            for k in range(per_photo):
                pair = shake_pair(images[name], pair_seed(seed, i, k), params)
                file = f"{Path(name).stem}_{k:02d}.png"
                _write_png(tmp / "input" / file, pair["blur"])
                _write_png(tmp / "target" / file, pair["sharp"])
                pairs.append({"file": file, "photo": name, "spawn_key": [i, k],
                              "subframes": int(len(pair["trajectory"])),
                              "blur_extent_px": round(_blur_extent(pair["trajectory"], height,
                                                                   width), 2),
                              "saturated": pair["saturated"], "noisy": pair["noisy"]})
        manifest = {
            "format": FORMAT, "version": VERSION, "seed": int(seed),
            "size": [height, width], "per_photo": int(per_photo), "photos": list(photos),
            "photo_source": texture_source(),
            "params": json.loads(json.dumps(dataclasses.asdict(params))),
            "pair_seed": "numpy SeedSequence(seed, spawn_key=(photo_index, k))",
            "images": "8-bit RGB PNG, sRGB; input = blurred, target = sharp centre crop",
            "model": "whole photo = one fronto-parallel plane at depth_range[0]: uniform camera "
                     "shake, no depth variation, no light discs",
            "pairs": pairs,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _publish(tmp, root, overwrite=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
