"""Cuts every pair of a dataset into overlapping tiles once, so training decodes small PNGs.

Decoding a 1280x720 PNG costs far more than the 256x256 crop taken from it; the usual remedy
(BasicSR's sub-image extraction) is to store tiles, e.g. 480x480 every 240 pixels, and crop
inside those. Tiles keep the pair aligned (same window for blur, sharp and depth) and are
written in the `paired_folder` layout:

  OUT/input/<name>_sNNN.png, OUT/target/<name>_sNNN.png [, OUT/depth/<name>_sNNN.npy]

  python tools/prepare_subimages.py --dataset gopro --root /data/GOPRO_Large --split train \\
      --out /data/GoPro_tiles/train --size 480 --step 240 --workers 2

then train with `make_source({"name": "paired_folder", "root": "/data/GoPro_tiles/train"})`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from typing import Any

import cv2
import numpy as np

from radblur_jax.atomic_io import write_atomic, write_bytes_atomic
from radblur_jax.data.sources import make_source


def tile_starts(length: int, size: int, step: int, thresh: int = 0) -> list[int]:
    """Window starts along one axis: every `step`, plus a last window flush with the border when
    more than `thresh` pixels would be left out. One window at 0 if `length <= size`."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, step))
    if length - (starts[-1] + size) > thresh:
        starts.append(length - size)
    return starts


def _png(img: np.ndarray, compression: int) -> bytes:
    bgr = np.ascontiguousarray(img[..., ::-1])
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def cut_example(ex: dict[str, Any], out: str, size: int, step: int, thresh: int,
                compression: int) -> int:
    """Writes the tiles of one example (uint8/uint16 `blur`, `sharp`, optional `depth`)."""
    h, w = ex["blur"].shape[:2]
    stem = os.path.splitext(ex["name"])[0].replace("/", "_").replace("\\", "_")
    n = 0
    for y in tile_starts(h, size, step, thresh):
        for x in tile_starts(w, size, step, thresh):
            win = (slice(y, y + size), slice(x, x + size))
            name = f"{stem}_s{n:03d}"
            write_bytes_atomic(os.path.join(out, "input", name + ".png"),
                               _png(ex["blur"][win], compression))
            write_bytes_atomic(os.path.join(out, "target", name + ".png"),
                               _png(ex["sharp"][win], compression))
            if "depth" in ex:
                tile = np.ascontiguousarray(ex["depth"][win][..., 0])
                write_atomic(os.path.join(out, "depth", name + ".npy"),
                             lambda tmp: np.save(tmp, tile))
            n += 1
    return n


_STATE: dict[str, Any] = {}


def _init(config: dict[str, Any], args: tuple) -> None:
    cv2.setNumThreads(1)
    _STATE["source"] = make_source(dict(config, raw=True))
    _STATE["args"] = args


def _work(index: int) -> int:
    return cut_example(_STATE["source"][index], *_STATE["args"])


def prepare(config: dict[str, Any], out: str, *, size: int = 480, step: int = 240,
            thresh: int = 0, compression: int = 3, workers: int = 1) -> int:
    """Tiles every example of `make_source(config)` into `out`; returns the number of tiles."""
    source = make_source(dict(config, raw=True))
    for d in ("input", "target") + (("depth",) if "depth" in source[0] else ()):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    args = (out, size, step, thresh, compression)
    if workers <= 1:
        _init(config, args)
        return sum(_work(i) for i in range(len(source)))
    with multiprocessing.get_context("spawn").Pool(workers, _init, (config, args)) as pool:
        return sum(pool.imap_unordered(_work, range(len(source)), chunksize=4))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="make_source name, e.g. gopro, reds")
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--step", type=int, default=240)
    p.add_argument("--thresh", type=int, default=0,
                   help="add a border-flush window when more than this many pixels remain")
    p.add_argument("--png_compression", type=int, default=3, choices=range(10))
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    n = prepare({"name": a.dataset, "root": a.root, "split": a.split}, a.out, size=a.size,
                step=a.step, thresh=a.thresh, compression=a.png_compression, workers=a.workers)
    print(f"wrote {n} tiles to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
