"""Inference speed at 1280x720 (a GoPro frame): whole image, windows, and the adaptive exit.

Times the evaluation and deblur-CLI path (`radblur_jax.eval.inference.Restorer`: jitted,
batch-sharded) with random weights (speed does not depend on their values). Per preset and
mode it reports the first call (compile + run) and the best of `--repeats` later calls, the
forward's FLOPs (`flops.py`: XLA's cost analysis of the CPU's lowering, every loop unrolled)
and a matmul timed in the same run (2048^3 float32 on a CPU, 8192^3 bfloat16 on an
accelerator), whose rate turns the FLOPs into a floor: `floor_ratio` is the time per image
over `gflops / matmul_gflops_per_s`.

Modes:
  full      the whole image, all K sub-decoders;
  tiles     sliding windows (`--tile`, `--overlap`, `--tile-batch` windows per pass);
  adaptive  the whole image in the adaptive-exit mode (encoder and exit logits once, then only
            the sub-decoders the exit head asks for), the head steered to each depth it can
            pick (`steps`); one compilation serves every depth. `saved` is the share of the
            `full` time saved (with `full` in `--modes`).

`--profile` adds where one whole-image call's op time goes (`full` mode): by module (the Flax
module path from the HLO op names), op kind and op (`xla_profile.py`), summed over XLA's
threads.

  python benchmarks/inference.py [--presets tiny,s] [--modes full,tiles,adaptive] [--tile 384]
      [--overlap 32] [--batch 1] [--repeats 2] [--dtype float32|bfloat16] [--profile]
      [--json out.json]

Like the deblur CLI it re-executes itself with glibc's huge-page malloc and a heap kept between
calls (`radblur_jax/host_memory.py`, `forward_only`) unless `RADBLUR_HUGE_PAGES=0`; the JSON
records the `GLIBC_TUNABLES` it ran with. `--dtype bfloat16` sets the
compute dtype (params stay float32); judge bf16 on an accelerator only (XLA:CPU widens it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from flops import encode_gflops, forward_gflops  # noqa: E402  (benchmarks/, the script's own folder)
from train_step import matmul_flops_per_s  # noqa: E402
from xla_profile import print_profile, profile_compiled, profile_summary  # noqa: E402

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.eval.adaptive_exit import exit_depth, steered_params  # noqa: E402
from radblur_jax.eval.inference import InferenceOptions, Restorer, window_starts  # noqa: E402
from radblur_jax.eval.loading import sampled_params, with_dtype  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402

MODES = ("full", "tiles", "adaptive")


def write_results(path: str, loadavg_before: tuple, results: list[dict]) -> None:
    """The rows as JSON at `path`, with the device, JAX version, glibc tunables and load
    around the run."""
    write_json_atomic(path, {"device": jax.devices()[0].device_kind,
                             "devices": jax.device_count(), "jax": jax.__version__,
                             "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
                             "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
                             "results": results})


def timed_calls(restorer: Restorer, x: np.ndarray, repeats: int) -> tuple[float, list, np.ndarray]:
    """(first call s, later calls s, sub-decoders run per image and window)."""
    t0 = time.perf_counter()
    out = restorer.restore(x)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = restorer.restore(x)
        times.append(time.perf_counter() - t0)
    return first, times, out.steps


def tiles_gflops(cfg, args: argparse.Namespace) -> float:
    """The window mode's FLOPs: the windows' forward passes (`tile_batch` windows each) plus
    the whole-image disparity at about `tile**2` px (the blending's adds are left out)."""
    th, tw = min(args.height, args.tile), min(args.width, args.tile)
    n = (len(window_starts(args.height, args.tile, args.overlap))
         * len(window_starts(args.width, args.tile, args.overlap)))
    passes = -(-n // args.tile_batch)
    windows = passes * forward_gflops(cfg, (args.tile_batch * args.batch, th, tw, 3))
    scale = min(1.0, args.tile / float(np.sqrt(args.height * args.width)))
    small = (args.batch, max(14, round(args.height * scale)), max(14, round(args.width * scale)))
    return windows + encode_gflops(cfg, (*small, 3))


def bench(preset: str, mode: str, args: argparse.Namespace) -> list[dict]:
    """The rows of one preset and mode (one per exit depth in adaptive mode)."""
    cfg = with_dtype(preset, args.dtype)
    model = build_radblur(cfg)
    params = sampled_params(model, 0)
    k = model.cfg.decoder.num_sub_decoders
    x = np.random.default_rng(0).random((args.batch, args.height, args.width, 3),
                                        dtype=np.float32)
    shape = x.shape
    base = {"preset": preset, "mode": mode, "sub_decoders": k, "batch": args.batch,
            "height": args.height, "width": args.width, "dtype": args.dtype,
            "tile": args.tile if mode == "tiles" else 0,
            "overlap": args.overlap if mode == "tiles" else 0}
    if mode == "adaptive":
        restorer = Restorer(model, params, InferenceOptions(adaptive=True))  # compiles once
        classes = len(model.cfg.exit.psnr_edges) + 1
        runs = [(c, steered_params(params, c))
                for c in sorted({exit_depth(c, k, classes): c for c in range(classes)}.values())]
    else:
        options = (InferenceOptions(tile=args.tile, overlap=args.overlap,
                                    tile_batch=args.tile_batch) if mode == "tiles"
                   else InferenceOptions())
        restorer, runs = Restorer(model, params, options), [(None, params)]
    rows = []
    for exit_class, run_params in runs:
        restorer.params = run_params
        first, times, steps = timed_calls(restorer, x, args.repeats)
        best = min(times) if times else first
        n_steps = int(steps.max())
        gflops = (tiles_gflops(cfg, args) if mode == "tiles"
                  else forward_gflops(cfg, shape, num_active=n_steps))
        matmul = matmul_flops_per_s() / 1e9
        per_image = best / args.batch
        rows.append({**base, "steps": n_steps, "exit_class": exit_class,
                     "first_call_s": first, "per_image_s": per_image, "all_seconds": times,
                     "megapixels_per_s": args.height * args.width / 1e6 / per_image,
                     "gflops": gflops / args.batch, "matmul_gflops_per_s": matmul,
                     "floor_ratio": per_image / (gflops / args.batch / matmul)})
        if args.profile and mode == "full":
            profile = profile_compiled(restorer.lower(x).compile(), lambda: restorer.restore(x),
                                       depth=4)
            print_profile(profile, what="call")
            rows[-1]["profile"] = profile_summary(profile)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,s")
    p.add_argument("--modes", default="full,tiles", help=f"any of {', '.join(MODES)}")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--tile", type=int, default=384)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--tile-batch", type=int, default=4)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--profile", action="store_true",
                   help="per-op profile of one whole-image call (full mode)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: expected a comma list of {', '.join(MODES)}, got {args.modes!r}")
    device = jax.devices()[0]
    load = os.getloadavg()
    print(f"device {device.device_kind} x{jax.device_count()}, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, {args.batch}x{args.height}x{args.width}, {args.dtype}")
    print(f"{'preset':>6} {'mode':>12} {'steps':>7} {'first call s':>13} {'s/image':>8} "
          f"{'MP/s':>7} {'GFLOP':>8} {'matmul GF/s':>12} {'x floor':>8} {'saved':>6}")
    results = []
    for preset in [s for s in args.presets.split(",") if s]:
        full_s = None
        for mode in modes:
            for r in bench(preset, mode, args):
                if mode == "full":
                    full_s = r["per_image_s"]
                if mode == "adaptive" and full_s:
                    r["saved"] = 1.0 - r["per_image_s"] / full_s
                results.append(r)
                label = f"tiles {r['tile']}/{r['overlap']}" if mode == "tiles" else mode
                saved = f"{100 * r['saved']:5.1f}%" if "saved" in r else ""
                print(f"{preset:>6} {label:>12} {r['steps']:>2} of {r['sub_decoders']} "
                      f"{r['first_call_s']:13.2f} {r['per_image_s']:8.3f} "
                      f"{r['megapixels_per_s']:7.3f} {r['gflops']:8.1f} "
                      f"{r['matmul_gflops_per_s']:12.1f} {r['floor_ratio']:8.2f} {saved:>6}",
                      flush=True)
    if args.json:
        write_results(args.json, load, results)
    return 0


if __name__ == "__main__":
    from radblur_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages(forward_only=True)
    sys.exit(main())
