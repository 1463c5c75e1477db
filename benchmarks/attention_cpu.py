"""Attention microbenchmark on CPU: `attention_ops` variants vs PyTorch
`scaled_dot_product_attention`.

    python benchmarks/attention_cpu.py --batch 1 8 --reps 7 [--json out.json]

Shape of DINOv2 ViT-S at 518 px: `(B, 1370, 6, 64)` float32 (`--tokens` for other sizes).
Every variant is jitted and warmed up; runs alternate over all variants and PyTorch so they
share the machine load, each timed call right after an untimed one of the same variant (a
variant that evicts the cache, like the XLA path, would otherwise slow the next); medians.
`--threads` pins both sides (CPU affinity for XLA, set before `jax` is imported;
`torch.set_num_threads` for PyTorch).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

H, DH = 6, 64

# name -> keyword arguments of `blocked_attention` (None: the XLA path).
VARIANTS = {
    "xla (jax.nn.dot_product_attention)": None,
    "blocked auto (plan_tiles)": dict(),
    "blocked heads/step=1": dict(heads_per_step=1, query_tile=10**9),
    "blocked heads/step=2": dict(heads_per_step=2, query_tile=10**9),
    "blocked heads/step=3": dict(heads_per_step=3, query_tile=10**9),
    "blocked heads/step=6": dict(heads_per_step=6, query_tile=10**9),
    "blocked q-tiles 229 (lax.map)": dict(heads_per_step=1, query_tile=229),
    "blocked q-tiles 343 (lax.map)": dict(heads_per_step=1, query_tile=343),
    "blocked q-tiles 457 (lax.map)": dict(heads_per_step=1, query_tile=457),
    "blocked q-tiles 685 (lax.map)": dict(heads_per_step=1, query_tile=685),
    "blocked q-tiles 1196 (lax.map)": dict(heads_per_step=1, query_tile=1196),
    "blocked q-tiles 2392 (lax.map)": dict(heads_per_step=1, query_tile=2392),
    "blocked q-tiles 512 unrolled, heads/step=1": dict(heads_per_step=1, query_tile=512,
                                                       unroll_tiles=True),
    "blocked q-tiles 685 unrolled, heads/step=2": dict(heads_per_step=2, query_tile=685,
                                                       unroll_tiles=True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--tokens", type=int, default=1370,
                   help="1370: 518 px, 197: 224 px, 4784: 1280x720 through the deblur model")
    p.add_argument("--only", nargs="*", default=None, help="substrings of variant names to run")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import jax
    import jax.numpy as jnp
    import torch

    from radblur_jax.atomic_io import write_json_atomic
    from radblur_jax.models import attention_ops as ops
    torch.set_num_threads(args.threads)

    T = args.tokens
    names = [n for n in VARIANTS if not args.only or any(s in n for s in args.only)]
    print(f"threads {args.threads}, jax {jax.__version__}, torch {torch.__version__}, "
          f"T={T} H={H} Dh={DH}, load avg {os.getloadavg()[0]:.1f}")
    rows = []
    for b in args.batch:
        rng = np.random.default_rng(b)
        qkv = [rng.standard_normal((b, T, H, DH)).astype(np.float32) for _ in range(3)]
        jqkv = [jnp.asarray(x) for x in qkv]
        tqkv = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1, 3))) for x in qkv]
        ref = np.asarray(jax.nn.dot_product_attention(*jqkv, implementation="xla"), np.float64)
        fns, errs = {}, {}
        for n in names:
            kw = VARIANTS[n]
            f = jax.jit(functools.partial(jax.nn.dot_product_attention, implementation="xla")
                        if kw is None else functools.partial(ops.blocked_attention, **kw))
            out = np.asarray(f(*jqkv), np.float64)
            errs[n] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
            fns[n] = f

        def run_torch(tqkv=tqkv):
            with torch.inference_mode():
                return torch.nn.functional.scaled_dot_product_attention(*tqkv)
        errs["torch sdpa"] = float(np.linalg.norm(run_torch().numpy().transpose(0, 2, 1, 3) - ref)
                                   / np.linalg.norm(ref))
        times = {n: [] for n in list(fns) + ["torch sdpa"]}
        for _ in range(args.reps):
            for n, f in fns.items():
                jax.block_until_ready(f(*jqkv))  # untimed: the previous variant's leftovers
                t0 = time.perf_counter()
                jax.block_until_ready(f(*jqkv))
                times[n].append(time.perf_counter() - t0)
            run_torch()
            t0 = time.perf_counter()
            run_torch()
            times["torch sdpa"].append(time.perf_counter() - t0)
        flops = 4 * b * H * T * T * DH
        tt = float(np.median(times["torch sdpa"]))
        print(f"\nbatch {b} (load avg {os.getloadavg()[0]:.1f})\n"
              "| variant | ms (median) | ms (min) | GFLOP/s | torch/variant | rel err vs xla |\n"
              "|---|---|---|---|---|---|")
        for n, ts in times.items():
            m = float(np.median(ts))
            row = dict(batch=b, variant=n, ms_median=m * 1e3, ms_min=min(ts) * 1e3,
                       gflops=flops / m / 1e9, torch_over_variant=tt / m, rel_err_vs_xla=errs[n])
            rows.append(row)
            print(f"| {n} | {row['ms_median']:.1f} | {row['ms_min']:.1f} | {row['gflops']:.0f} | "
                  f"{row['torch_over_variant']:.2f} | {errs[n]:.1e} |")
    if args.json:
        write_json_atomic(args.json, dict(threads=args.threads, tokens=T, heads=H, head_dim=DH,
                                          reps=args.reps, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
