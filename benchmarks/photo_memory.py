"""Memory and time of the deblur CLI on a large photo: the whole image against windows.

For each preset and mode the script counts the program `Restorer` compiles (XLA's memory
analysis: arguments, outputs, temporaries, as `--tile auto` does) and runs the deblur CLI
(`python -m radblur_jax.deblur --random-init PRESET`, its own process, its malloc settings)
on one photo of `--height` x `--width` px: scikit-image's `chelsea` resized, saved as PNG. It
reports the CLI's wall time (start to exit: imports, compile, restore, write) and its peak
resident memory (`wait4`'s `ru_maxrss`), beside the count, so the count's share of the real
peak shows.

  python benchmarks/photo_memory.py [--presets tiny,s] [--modes whole,windows]
      [--height 3024] [--width 4032] [--tile 512] [--max-memory GIB] [--count-only]
      [--json out.json]

A program counted above `--max-memory` GiB (default: half the memory available, the CLI's own
limit for `--tile auto`) is counted only, not run; `--count-only` runs none.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.eval.inference import (  # noqa: E402
    InferenceOptions,
    Restorer,
    available_memory,
    program_bytes,
)
from radblur_jax.eval.loading import load_random  # noqa: E402

MODES = ("whole", "windows")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_photo(path: str, height: int, width: int) -> None:
    """scikit-image's `chelsea` resized to `height` x `width` (bicubic), as PNG."""
    import cv2
    from skimage import data

    photo = cv2.resize(data.chelsea(), (width, height), interpolation=cv2.INTER_CUBIC)
    if not cv2.imwrite(path, cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the test photo")


def counted_gib(preset: str, tile: int, overlap: int, height: int, width: int) -> float:
    """XLA's count of the program the CLI compiles for one photo, GiB."""
    loaded = load_random(preset)
    restorer = Restorer(loaded.model, loaded.params, InferenceOptions(tile=tile, overlap=overlap))
    x = np.zeros((1, height, width, 3), np.float32)
    return program_bytes(restorer.lower(x).compile()) / 2**30


def run_cli(preset: str, tile: int, overlap: int, photo: str, out_dir: str) -> tuple[float, float]:
    """(wall s, peak resident GiB) of one deblur CLI process on `photo`."""
    cmd = [sys.executable, "-m", "radblur_jax.deblur", "--random-init", preset, "--input", photo,
           "--output", out_dir, "--tile", str(tile), "--overlap", str(overlap), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"deblur CLI failed ({preset}, tile {tile}): {err[-2000:]}")
    return seconds, usage.ru_maxrss * 1024 / 2**30  # Linux reports KiB


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,s")
    p.add_argument("--modes", default="whole,windows", help=f"any of {', '.join(MODES)}")
    p.add_argument("--height", type=int, default=3024)
    p.add_argument("--width", type=int, default=4032)
    p.add_argument("--tile", type=int, default=512, help="window side of the windows mode, px")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--max-memory", type=float, metavar="GIB", help="run the CLI only for "
                   "programs counted below this (default: half the available memory)")
    p.add_argument("--count-only", action="store_true", help="count; do not run the CLI")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: expected a comma list of {', '.join(MODES)}, got {args.modes!r}")
    limit = (args.max_memory if args.max_memory is not None
             else (available_memory() or 0) / 2 / 2**30)
    megapixels = args.height * args.width / 1e6
    print(f"device {jax.devices()[0].device_kind}, photo {args.width} x {args.height} px "
          f"({megapixels:.1f} MP); the CLI runs programs counted under {limit:.1f} GiB\n")
    print("| preset | mode | counted GiB | peak resident GiB | peak / counted | CLI wall s |")
    print("|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photo = os.path.join(tmp, "photo.png")
        write_photo(photo, args.height, args.width)
        for preset in [s for s in args.presets.split(",") if s]:
            for mode in modes:
                tile = args.tile if mode == "windows" else 0
                row = {"preset": preset, "mode": mode, "tile": tile, "overlap": args.overlap,
                       "height": args.height, "width": args.width,
                       "counted_gib": counted_gib(preset, tile, args.overlap, args.height,
                                                  args.width)}
                if not args.count_only and row["counted_gib"] < limit:
                    row["cli_s"], row["peak_resident_gib"] = run_cli(
                        preset, tile, args.overlap, photo, os.path.join(tmp, f"{preset}_{mode}"))
                rows.append(row)
                label = f"windows {tile}/{args.overlap}" if tile else "whole image"
                peak = (f"{row['peak_resident_gib']:.2f} | "
                        f"{row['peak_resident_gib'] / row['counted_gib']:.2f} | "
                        f"{row['cli_s']:.1f}") if "cli_s" in row else "- | - | -"
                print(f"| {preset} | {label} | {row['counted_gib']:.2f} | {peak} |", flush=True)
    if args.json:
        write_json_atomic(args.json, {"device": jax.devices()[0].device_kind,
                                      "jax": jax.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
