"""Cuts every pair of a dataset into overlapping tiles once, so training decodes small PNGs.

Decoding a 1280x720 PNG costs far more than the 256x256 crop taken from it; the usual remedy
(BasicSR's sub-image extraction) is to store tiles, e.g. 480x480 every 240 pixels, and crop
inside those. Tiles keep the pair aligned (same window for blur, sharp and depth) and are
written in the `paired_folder` layout:

  OUT/input/<name>_sNNN.png, OUT/target/<name>_sNNN.png [, OUT/depth/<name>_sNNN.npy]

OUT must not exist (or be empty); the tiles are written to a temporary folder beside it and
renamed into place when complete, so an error or a crash leaves no partial OUT.

  python tools/prepare_subimages.py --dataset gopro --root /data/GOPRO_Large --split train \\
      --out /data/GoPro_tiles/train --size 480 --step 240 --workers 2

then train with `make_source({"name": "paired_folder", "root": "/data/GoPro_tiles/train"})`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

try:
    from radblur_jax.data.sources import DEBLUR_NAMES, make_source
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from radblur_jax.data.sources import DEBLUR_NAMES, make_source
from radblur_jax.cli_args import int_at_least


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
            for key, folder in (("blur", "input"), ("sharp", "target")):
                with open(os.path.join(out, folder, name + ".png"), "wb") as f:
                    f.write(_png(ex[key][win], compression))
            if "depth" in ex:
                np.save(os.path.join(out, "depth", name + ".npy"),
                        np.ascontiguousarray(ex["depth"][win][..., 0]))
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
    """Tiles every example of `make_source(config)` into `out` (which must not exist, or be
    empty; written atomically); returns the number of tiles."""
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"{out}: already exists and is not an empty folder")
    source = make_source(dict(config, raw=True))
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        for d in ("input", "target") + (("depth",) if "depth" in source[0] else ()):
            os.makedirs(os.path.join(tmp, d))
        args = (tmp, size, step, thresh, compression)
        if workers <= 1:
            _init(config, args)
            n = sum(_work(i) for i in range(len(source)))
        else:
            with multiprocessing.get_context("spawn").Pool(workers, _init, (config, args)) as pool:
                n = sum(pool.imap_unordered(_work, range(len(source)), chunksize=4))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=DEBLUR_NAMES, help="make_source name")
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    p.add_argument("--size", type=int_at_least(1), default=480)
    p.add_argument("--step", type=int_at_least(1), default=240)
    p.add_argument("--thresh", type=int_at_least(0), default=0,
                   help="add a border-flush window when more than this many pixels remain")
    p.add_argument("--png_compression", type=int, default=3, choices=range(10))
    p.add_argument("--workers", type=int_at_least(1), default=1)
    a = p.parse_args(argv)
    try:
        n = prepare({"name": a.dataset, "root": a.root, "split": a.split}, a.out, size=a.size,
                    step=a.step, thresh=a.thresh, compression=a.png_compression,
                    workers=a.workers)
    except FileExistsError as e:
        p.error(f"argument --out: {e}")
    except ValueError as e:  # DataError names the file or folder; others the split or option
        p.error(str(e))
    print(f"wrote {n} tiles to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
