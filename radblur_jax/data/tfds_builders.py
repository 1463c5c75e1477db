"""TFDS builders for GoPro (`radblur_gopro`) and the built-in synthetic set
(`radblur_synthetic`), written as ArrayRecord so grain reads them via `tfds.data_source`.

Build (files come from the manual directory; every pair is decoded and validated first):

  python -m radblur_jax.data.tfds_builders radblur_gopro --manual_dir /data/GOPRO_Large \
      --data_dir ~/tensorflow_datasets

(also any registered TFDS dataset, e.g. `nyu_depth_v2`, which TFDS downloads itself), or in
Python `build(name, manual_dir, data_dir)`. The `tfds build` CLI works too
(`--imports radblur_jax.data.tfds_builders --file_format array_record`) where apache-beam is
installed: the CLI imports it. Read back with
`make_source({"name": "gopro", "format": "tfds", "data_dir": ...})`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from radblur_jax.data.sources import deblur, paired

_IMAGE = dict(shape=(None, None, 3), dtype=np.uint8, encoding_format="png")


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base that reports this file as its code path (tfds' own lookup needs the extra package
    `importlib_resources` for builders that live outside tensorflow_datasets)."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)


def _pairs(source: paired.PairedSource) -> Iterator[tuple[str, dict[str, Any]]]:
    source.raw = True
    for i, rec in enumerate(source.records):
        ex = source.read(rec)  # raises io.DataError naming the file
        for k in ("blur", "sharp"):
            if ex[k].dtype != np.uint8:
                raise ValueError(f"{getattr(rec, k)}: TFDS builders store 8-bit images, "
                                 f"got {ex[k].dtype}")
        out = {"blur": ex["blur"], "sharp": ex["sharp"], "name": rec.name}
        if "depth" in ex:
            out["depth"] = ex["depth"][:, :, 0]
        yield f"{i:07d}", out


class RadblurGopro(_Builder):
    """GoPro (Nah et al. 2017) blurred/sharp pairs, 2103 train / 1111 test, 1280x720."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download GOPRO_Large.zip from the GoPro dataset page (Nah et al., "Deep Multi-scale CNN for
    Dynamic Scene Deblurring", CVPR 2017: https://seungjunnah.github.io/Datasets/gopro.html)
    and unzip it. Pass the unzipped `GOPRO_Large` directory as the manual directory
    (`--manual_dir .../GOPRO_Large`); it must contain `train/GOPRxxxx_xx_xx/{blur,sharp}/*.png`
    and `test/...`. The flattened layout `{train,test}/{input,target}/*.png` used by BasicSR-style
    repositories is accepted too. The `blur` frames (not `blur_gamma`) are used.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "blur": tfds.features.Image(**_IMAGE),
                "sharp": tfds.features.Image(**_IMAGE),
                "name": tfds.features.Text(),
            }),
            supervised_keys=("blur", "sharp"),
            homepage="https://seungjunnah.github.io/Datasets/gopro.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = str(dl_manager.manual_dir)
        return {s: self._generate_examples(root, s) for s in ("train", "test")}

    def _generate_examples(self, root: str, split: str):
        yield from _pairs(deblur.gopro(root, split))


class RadblurSynthetic(_Builder):
    """The project's depth-aware synthetic blur set, with the sharp frame's depth map."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Generate the set first: `python tools/make_synthetic_dataset.py --output DIR` (see
    docs/datasets.md, "Built-in synthetic dataset"). Pass DIR as the manual directory; it must
    contain `manifest.json` and `{train,test}/<scene>/{blur,sharp,depth}/`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "blur": tfds.features.Image(**_IMAGE),
                "sharp": tfds.features.Image(**_IMAGE),
                "depth": tfds.features.Tensor(shape=(None, None), dtype=np.float32,
                                               encoding="zlib"),
                "name": tfds.features.Text(),
            }),
            supervised_keys=("blur", "sharp"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        root = str(dl_manager.manual_dir)
        return {s: self._generate_examples(root, s) for s in ("train", "test")}

    def _generate_examples(self, root: str, split: str):
        yield from _pairs(deblur.synthetic(root, split, with_depth=True))


def build(name: str, manual_dir: str | None, data_dir: str) -> tfds.core.DatasetBuilder:
    """Builds a TFDS dataset (`radblur_gopro`, `radblur_synthetic`, `nyu_depth_v2`, ...) as
    ArrayRecord into `data_dir`, reading manual downloads from `manual_dir`."""
    builder = tfds.builder(name, data_dir=os.path.expanduser(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build a TFDS dataset as ArrayRecord for grain.")
    p.add_argument("name", help="radblur_gopro, radblur_synthetic, nyu_depth_v2, ...")
    p.add_argument("--manual_dir", default=None, help="unpacked manual download")
    p.add_argument("--data_dir", default="~/tensorflow_datasets")
    a = p.parse_args(argv)
    builder = build(a.name, a.manual_dir, a.data_dir)
    print(f"{a.name}: {builder.info.splits} in {builder.data_dir}")


if __name__ == "__main__":
    main()
