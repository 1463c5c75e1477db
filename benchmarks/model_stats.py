"""Parameters and forward FLOPs of every RADBlur preset (XLA cost analysis, batch 1).

FLOPs come from XLA's cost analysis of the jitted forward (`RADBlurOutput` for one image), with
every loop unrolled (`flops.counting_config`: the sub-decoder scan and the CPU's blocked
attention) so that every sub-decoder and every attention head is counted. Nothing runs: params
are abstract shapes. Prints a markdown table; `--json PATH` writes the same figures.

    python benchmarks/model_stats.py [--presets tiny,s,b,l,g] [--sizes 256x256,1280x720]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from flops import abstract_params, counting_config  # noqa: E402  (benchmarks/)

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.models.configs import radblur_names  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def preset_stats(name: str, sizes: list[tuple[int, int]]) -> dict:
    """Params per part and forward GFLOPs per (width, height) for preset `name`."""
    cfg = counting_config(name)
    model = build_radblur(cfg)
    params = abstract_params(model)
    row = dict(preset=name, vit=cfg.encoder.embed_dim, K=cfg.decoder.num_sub_decoders,
               width=cfg.decoder.width, params_m=count_params(params) / 1e6,
               params_m_by_part={k: count_params(v) / 1e6 for k, v in params.items()},
               gflops={})
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
    for w, h in sizes:
        start = time.time()
        lowered = forward.lower(params, jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        row["gflops"][f"{w}x{h}"] = float(cost["flops"]) / 1e9
        print(f"# {name} {w}x{h}: {row['gflops'][f'{w}x{h}']:.1f} GFLOPs "
              f"({time.time() - start:.0f} s)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default=",".join(radblur_names()))
    parser.add_argument("--sizes", default="256x256,1280x720", help="WxH list")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    rows = [preset_stats(n, sizes) for n in args.presets.split(",")]
    keys = [f"{w}x{h}" for w, h in sizes]
    print("\n| preset | ViT width | K | decoder width | params (M) | encoder+DPT (M) "
          "| stem+decoder (M) | " + " | ".join(f"GFLOPs {k}" for k in keys) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(keys))
    for r in rows:
        part = r["params_m_by_part"]
        dec = part.get("stem", 0) + part.get("decoder", 0)
        print(f"| {r['preset']} | {r['vit']} | {r['K']} | {r['width']} | {r['params_m']:.2f} | "
              f"{part['depth']:.2f} | {dec:.2f} | "
              + " | ".join(f"{r['gflops'][k]:.1f}" for k in keys) + " |")
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
