"""Sources over TFDS datasets prepared as ArrayRecord (read with `tfds.data_source`).

NYU Depth v2 is not downloaded on the fly; prepare it once where the network allows:
`python -m radblur_jax.data.tfds_builders nyu_depth_v2 --data_dir DIR` (ArrayRecord), then
point `nyu_depth_v2(data_dir=DIR)` at DIR. The project's own builders
(`radblur_jax/data/tfds_builders.py`: GoPro and the synthetic set) are read with `tfds_paired`.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import numpy as np

from radblur_jax.data import image_io
from radblur_jax.data.image_io import DataError
from radblur_jax.data.sources.depth import depth_fields


def _name(x: Any, index: int) -> str:
    if isinstance(x, bytes):
        return x.decode()
    return str(index) if x is None else str(x)


def open_tfds(name: str, split: str, data_dir: str | None) -> Any:
    """`tfds.data_source(name, split=split, data_dir=data_dir, download=False)` with a clear
    error when the dataset was not prepared (as ArrayRecord) under `data_dir`."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    if name.startswith("radblur_"):
        # registers the project's builders with tfds
        from radblur_jax.data import tfds_builders  # noqa: F401  pylint: disable=all
    base = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    infos = glob.glob(os.path.join(base, name.split(":")[0], "**", "dataset_info.json"),
                      recursive=True)
    hint = (f"prepare it as ArrayRecord with `python -m radblur_jax.data.tfds_builders {name} "
            f"--data_dir {base} [--manual_dir DIR]` (manual downloads: see the builder's "
            "instructions) or pass data_dir=")
    if not infos:
        raise DataError(f"{base}: TFDS dataset {name!r} not found; {hint}")
    try:
        return tfds.data_source(name, split=split, data_dir=base, download=False)
    except Exception as e:  # tfds raises several unrelated types here
        raise DataError(f"{base}: cannot open TFDS dataset {name!r} split {split!r}: {e}; "
                           f"{hint}") from e


class TfdsDepthSource:
    """RGB-D examples from a TFDS data source with `image` and `depth` features."""

    def __init__(self, name: str = "nyu_depth_v2", split: str = "train",
                 data_dir: str | None = None, *, depth_scale: float = 1.0):
        self.source = open_tfds(name, split, data_dir)
        self.depth_scale = depth_scale

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.source[int(index)]
        depth = np.asarray(ex["depth"], np.float32)
        if depth.ndim == 3:
            depth = depth[:, :, 0]
        image = image_io.to_unit(np.asarray(ex["image"]))
        return {"image": image, **depth_fields(depth, self.depth_scale), "name": str(int(index))}


def nyu_depth_v2(split: str = "train", data_dir: str | None = None) -> TfdsDepthSource:
    """NYU Depth v2 (TFDS `nyu_depth_v2`: 480x640 RGB, depth in metres); splits train/validation."""
    return TfdsDepthSource("nyu_depth_v2", split, data_dir)


class TfdsPairedSource:
    """Blur/sharp examples from the project's TFDS builders (stored as uint8; float32 in [0, 1]
    unless `raw`, then uint8 for the pipeline to convert after cropping)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None, *,
                 raw: bool = False):
        self.source = open_tfds(name, split, data_dir)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.source[int(index)]
        conv = np.asarray if self.raw else (lambda x: image_io.to_unit(np.asarray(x)))
        out = {"blur": conv(ex["blur"]), "sharp": conv(ex["sharp"])}
        if "depth" in ex:
            d = np.asarray(ex["depth"], np.float32)
            out["depth"] = d if d.ndim == 3 else d[:, :, None]
        out["name"] = _name(ex.get("name"), int(index))
        return out


def tfds_paired(name: str, split: str = "train", data_dir: str | None = None
                ) -> TfdsPairedSource:
    """Reads `radblur_gopro` or `radblur_synthetic` built by `tfds_builders`."""
    return TfdsPairedSource(name, split, data_dir)
