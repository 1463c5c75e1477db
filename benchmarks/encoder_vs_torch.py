"""Flax vs PyTorch CPU throughput: DINOv2 ViT-S and Depth Anything V2-S at 518 x 518.

    python benchmarks/encoder_vs_torch.py                       # both models, batch 1 and 8
    python benchmarks/encoder_vs_torch.py --models vit --batch 1 --reps 5 --json out.json

Both sides run the same random weights (transformers' `Dinov2Model` /
`DepthAnythingForDepthEstimation` with the ViT-S config, converted by
`radblur_jax.convert.keymaps`) on the same inputs with the same number of CPU threads
(`--threads`, default all CPUs this process may use; JAX is pinned by CPU affinity, which must be
set before `jax` is imported, PyTorch by `torch.set_num_threads`). Flax runs jitted and warmed
up (compile excluded); PyTorch runs under `torch.inference_mode()` with SDPA attention. Runs
alternate Flax / PyTorch so both see the same machine load; figures are medians.
Prints a table (images/s, ratio flax/torch, output rel err) and writes it as JSON with `--json`.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

IMAGE = 518
DA_V2_S = dict(features=64, out_channels=[48, 96, 192, 384])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vit", "depth"], choices=["vit", "depth"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="CPU threads for both sides (default: all usable CPUs)")
    p.add_argument("--reps", type=int, default=5, help="timed runs per side (median reported)")
    p.add_argument("--attention", default="auto", help="attention_impl for the Flax encoder")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def _pin_threads(n: int) -> None:
    """Restricts this process (and XLA's thread pool, sized from affinity) to `n` CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if n > len(cpus):
        raise SystemExit(f"--threads {n} exceeds the {len(cpus)} usable CPUs")
    os.sched_setaffinity(0, cpus[:n])


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _vit_config_kw() -> dict:
    return dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=IMAGE,
                patch_size=14)


def build_vit(attention_impl: str):
    """(torch model, flax apply(images NHWC) -> last_hidden, params, fmt)."""
    import jax
    import transformers

    from radblur_jax.convert import keymaps
    from radblur_jax.models.backends import resolve_backend
    from radblur_jax.models.vit import DinoViT

    model = transformers.Dinov2Model(transformers.Dinov2Config(
        **_vit_config_kw(), attn_implementation="sdpa")).eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params, cfg, _ = keymaps.convert_state_dict("dinov2_hf", sd)
    cfg.attention_impl = attention_impl
    net = DinoViT(cfg, resolve_backend())  # the form training runs here (fast on the CPU)
    flax_fn = jax.jit(lambda p, x: net.apply({"params": p}, x).last_hidden)

    def torch_fn(x):
        return model(pixel_values=x).last_hidden_state
    return torch_fn, flax_fn, params


def build_depth(attention_impl: str):
    """(torch model fn, flax apply(images NHWC) -> disparity, params)."""
    import jax
    import transformers

    from radblur_jax.convert import keymaps
    from radblur_jax.models.backends import resolve_backend
    from radblur_jax.models.depth_anything import DepthAnything

    backbone = transformers.Dinov2Config(**_vit_config_kw(), out_indices=[3, 6, 9, 12],
                                         reshape_hidden_states=False, apply_layernorm=True,
                                         attn_implementation="sdpa")
    cfg = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=384,
        neck_hidden_sizes=DA_V2_S["out_channels"], fusion_hidden_size=DA_V2_S["features"],
        head_hidden_size=32, depth_estimation_type="relative")
    model = transformers.DepthAnythingForDepthEstimation(cfg).eval()
    # The DPT top level has no attention; the DINOv2 backbone must run SDPA (fused on CPU).
    if model.backbone.config._attn_implementation != "sdpa":
        raise RuntimeError("transformers' Depth Anything backbone is not using SDPA attention")
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params, enc, dpt = keymaps.convert_state_dict("depth_anything_hf", sd)
    if (dpt.features, tuple(dpt.out_channels)) != (64, (48, 96, 192, 384)):
        raise RuntimeError(f"converted DPT config {dpt} is not DA V2-S")
    enc.attention_impl = attention_impl
    net = DepthAnything(enc, dpt, resolve_backend())
    flax_fn = jax.jit(lambda p, x: net.apply({"params": p}, x, return_features=False).disparity)

    def torch_fn(x):
        return model(pixel_values=x).predicted_depth
    return torch_fn, flax_fn, params


def time_pair(flax_call: Callable[[], object], torch_call: Callable[[], object], reps: int
              ) -> dict[str, list[float]]:
    """Alternating timed runs (Flax first, then PyTorch), after one warm-up each.

    Returns wall seconds (`flax`, `torch`) and process CPU seconds (`flax_cpu`, `torch_cpu`, all
    threads: a cross-check that is less sensitive to other processes' load than wall time).
    """
    import jax
    jax.block_until_ready(flax_call())
    torch_call()
    out = {"flax": [], "torch": [], "flax_cpu": [], "torch_cpu": []}
    for _ in range(reps):
        for side, call in (("flax", lambda: jax.block_until_ready(flax_call())),
                           ("torch", torch_call)):
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            out[side].append(time.perf_counter() - t0)
            out[side + "_cpu"].append(time.process_time() - c0)
    return out


def bench_model(name: str, builder, batches, reps: int, attention_impl: str) -> list[dict]:
    """Rows `{model, batch, flax_img_s, torch_img_s, ratio, rel_err, ...}` for one model."""
    import jax
    import jax.numpy as jnp
    import torch

    torch_fn, flax_fn, params = builder(attention_impl)
    params = jax.device_put(params)
    rows = []
    for b in batches:
        x = np.random.default_rng(b).standard_normal((b, IMAGE, IMAGE, 3)).astype(np.float32)
        xj = jnp.asarray(x)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        t0 = time.perf_counter()
        out_f = np.asarray(jax.block_until_ready(flax_fn(params, xj)))
        compile_s = time.perf_counter() - t0
        with torch.inference_mode():
            out_t = torch_fn(xt).numpy()
            err = rel_err(out_f, out_t)

            ts = time_pair(lambda xj=xj: flax_fn(params, xj), lambda xt=xt: torch_fn(xt), reps)
        mf, mt = float(np.median(ts["flax"])), float(np.median(ts["torch"]))
        cf, ct = float(np.median(ts["flax_cpu"])), float(np.median(ts["torch_cpu"]))
        rows.append(dict(model=name, batch=b, flax_img_s=b / mf, torch_img_s=b / mt,
                         ratio=mt / mf, ratio_best=min(ts["torch"]) / min(ts["flax"]),
                         ratio_cpu_time=ct / cf, rel_err=err, flax_s=mf, torch_s=mt,
                         flax_cpu_s=cf, torch_cpu_s=ct, flax_runs_s=ts["flax"],
                         torch_runs_s=ts["torch"], flax_first_call_s=compile_s,
                         load_avg=os.getloadavg()[0]))
        print(f"  {name} batch {b}: flax {b / mf:.3f} img/s, torch {b / mt:.3f} img/s, "
              f"ratio {mt / mf:.2f} (best runs {rows[-1]['ratio_best']:.2f}, CPU time "
              f"{ct / cf:.2f}), rel err {err:.1e}", flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| model | batch | Flax img/s | PyTorch img/s | ratio flax/torch | ratio, best runs "
            "| ratio, CPU time | output rel err | load avg |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['flax_img_s']:.3f} | "
                     f"{r['torch_img_s']:.3f} | {r['ratio']:.2f} | {r['ratio_best']:.2f} | "
                     f"{r['ratio_cpu_time']:.2f} | {r['rel_err']:.1e} | {r['load_avg']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    _pin_threads(args.threads)
    import jax
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    names = {"vit": "DINOv2 ViT-S/14", "depth": "Depth Anything V2-S"}
    builders = {"vit": build_vit, "depth": build_depth}
    load = os.getloadavg()
    print(f"threads {args.threads}, jax {jax.__version__} ({jax.default_backend()}), torch "
          f"{torch.__version__}, {IMAGE}x{IMAGE}, reps {args.reps}, load avg {load[0]:.1f}",
          flush=True)
    rows = []
    for m in args.models:
        rows += bench_model(names[m], builders[m], args.batch, args.reps, args.attention)
    print(format_table(rows))
    if args.json:
        from radblur_jax.atomic_io import write_json_atomic
        meta = dict(date=datetime.date.today().isoformat(), machine=platform.machine(),
                    processor=platform.processor(), threads=args.threads,
                    jax=jax.__version__, torch=torch.__version__, image=IMAGE, reps=args.reps,
                    attention_impl=args.attention, load_avg_start=load,
                    load_avg_end=os.getloadavg())
        write_json_atomic(args.json, dict(meta=meta, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
