"""Adaptive exit: time saved against running every sub-decoder, at 1280x720 (a GoPro frame).

Per preset: the whole image with all K sub-decoders (`InferenceOptions()`), then the adaptive
mode (`InferenceOptions(adaptive=True)`: encoder and exit logits once, then only the asked-for
sub-decoders) with the exit head steered to each exit depth it can pick (random weights; speed
does not depend on their values, only on the depth). One compilation per mode: the depth is a
run-time value. Reports the best of `--repeats` calls and the share of the full time saved.

  python benchmarks/adaptive_exit.py [--presets s,l] [--height 720] [--width 1280]
      [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from inference import write_results  # noqa: E402  (benchmarks/, the script's own folder)

from radblur_jax.eval.adaptive_exit import exit_depth, steered_params  # noqa: E402
from radblur_jax.eval.inference import InferenceOptions, Restorer  # noqa: E402
from radblur_jax.eval.loading import sampled_params  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402


def _best(restorer: Restorer, x: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    """(first call s, best later call s, steps)."""
    t0 = time.perf_counter()
    out = restorer.restore(x)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = restorer.restore(x)
        times.append(time.perf_counter() - t0)
    return first, min(times) if times else first, out.steps


def bench(preset: str, args: argparse.Namespace) -> list[dict]:
    model = build_radblur(preset)
    params = sampled_params(model, 0)
    k, classes = model.cfg.decoder.num_sub_decoders, len(model.cfg.exit.psnr_edges) + 1
    x = np.random.default_rng(0).random((1, args.height, args.width, 3), dtype=np.float32)
    first, full, _ = _best(Restorer(model, params), x, args.repeats)
    base = {"preset": preset, "sub_decoders": k, "height": args.height, "width": args.width}
    rows = [{**base, "mode": "full", "steps": k, "first_call_s": first, "seconds": full,
             "saved": 0.0}]
    restorer = Restorer(model, params, InferenceOptions(adaptive=True))  # compiles once
    for c in sorted({exit_depth(c, k, classes): c for c in range(classes)}.values()):
        restorer.params = steered_params(params, c)
        first, best, steps = _best(restorer, x, args.repeats)
        rows.append({**base, "mode": "adaptive", "exit_class": c, "steps": int(steps.max()),
                     "first_call_s": first, "seconds": best, "saved": 1.0 - best / full})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="s,l")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    load = os.getloadavg()
    print(f"device {device.device_kind} x{jax.device_count()}, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, 1x{args.height}x{args.width}")
    print(f"{'preset':>6} {'mode':>9} {'steps':>7} {'first call s':>13} {'best s':>8} "
          f"{'saved':>7}")
    results = []
    for preset in [s for s in args.presets.split(",") if s]:
        for r in bench(preset, args):
            results.append(r)
            print(f"{preset:>6} {r['mode']:>9} {r['steps']:>3} of {r['sub_decoders']} "
                  f"{r['first_call_s']:13.2f} {r['seconds']:8.3f} {100 * r['saved']:6.1f}%",
                  flush=True)
    if args.json:
        write_results(args.json, load, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
