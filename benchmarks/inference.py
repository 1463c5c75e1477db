"""Inference speed: megapixels per second at 1280x720 (a GoPro frame), whole image and windows.

Times the evaluation path (`radblur_jax.eval.inference.Restorer`: jitted, batch-sharded) with
random weights (speed does not depend on their values). Per preset and mode it reports the
first call (compile + run) and the best of `--repeats` later calls.

  python benchmarks/inference.py [--presets tiny,s] [--modes full,tiles] [--tile 384]
      [--overlap 32] [--batch 1] [--repeats 2] [--dtype float32|bfloat16] [--json out.json]

`--dtype bfloat16` sets the model config's compute dtype (params stay float32); judge bf16 on
an accelerator only (XLA CPU widens bf16 convolutions).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.eval.inference import InferenceOptions, Restorer  # noqa: E402
from radblur_jax.eval.loading import sampled_params, with_dtype  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402


def write_results(path: str, loadavg_before: tuple, results: list[dict]) -> None:
    """The rows as JSON at `path`, with the device, JAX version and load around the run."""
    write_json_atomic(path, {"device": jax.devices()[0].device_kind,
                             "devices": jax.device_count(), "jax": jax.__version__,
                             "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
                             "results": results})


def bench(preset: str, mode: str, args: argparse.Namespace) -> dict:
    model = build_radblur(with_dtype(preset, args.dtype))
    params = sampled_params(model, 0)
    tile = args.tile if mode == "tiles" else 0
    options = InferenceOptions(tile=tile, overlap=args.overlap, tile_batch=args.tile_batch)
    restorer = Restorer(model, params, options)
    x = np.random.default_rng(0).random((args.batch, args.height, args.width, 3),
                                        dtype=np.float32)
    t0 = time.perf_counter()
    restorer(x)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        restorer(x)
        times.append(time.perf_counter() - t0)
    best = min(times) if times else first
    mpix = args.batch * args.height * args.width / 1e6
    return {"preset": preset, "mode": mode, "tile": tile, "overlap": args.overlap if tile else 0,
            "batch": args.batch, "height": args.height, "width": args.width,
            "dtype": args.dtype, "first_call_s": first,
            "seconds": best, "all_seconds": times, "megapixels_per_s": mpix / best}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,s")
    p.add_argument("--modes", default="full,tiles", help="full and/or tiles")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--tile", type=int, default=384)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--tile-batch", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in ("full", "tiles") for m in modes):
        p.error(f"--modes: expected full and/or tiles, got {args.modes!r}")
    device = jax.devices()[0]
    load = os.getloadavg()
    print(f"device {device.device_kind} x{jax.device_count()}, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, {args.batch}x{args.height}x{args.width}, {args.dtype}")
    print(f"{'preset':>6} {'mode':>12} {'first call s':>13} {'best s':>8} {'MP/s':>8}")
    results = []
    for preset in [s for s in args.presets.split(",") if s]:
        for mode in modes:
            r = bench(preset, mode, args)
            results.append(r)
            label = mode if mode == "full" else f"tiles {r['tile']}/{r['overlap']}"
            print(f"{preset:>6} {label:>12} {r['first_call_s']:13.2f} {r['seconds']:8.3f} "
                  f"{r['megapixels_per_s']:8.3f}", flush=True)
    if args.json:
        write_results(args.json, load, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
