"""Temporary memory of the compiled RADBlur train step: reversible backprop on vs off.

XLA's memory analysis of `jit(train_step).lower(...).compile()` (deterministic, nothing runs):
tiny encoder, decoder width 16, K = 2, 4, 8 sub-decoders, 256x256 crops, batch 4.
Prints a markdown table; `--json PATH` writes the same figures.

    python benchmarks/reversible_memory.py [--json out.json] [--ks 2,4,8] [--size 256 --batch 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.models.configs import radblur_config  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402
from radblur_jax.train.losses import deblur_loss, exit_cross_entropy, exit_labels  # noqa: E402

MiB = 2 ** 20


def train_step_memory(num_sub_decoders: int, mode: str, size: int, batch: int) -> dict:
    """Compiles one AdamW train step; `mode` is "plain", "reversible" (anchors every 2) or
    "pure-inversion" (anchor only at the start). Returns sizes in MiB and the compile time."""
    cfg = radblur_config("tiny")
    cfg.decoder.num_sub_decoders = num_sub_decoders
    cfg.decoder.reversible = mode != "plain"
    cfg.decoder.anchor_every = num_sub_decoders if mode == "pure-inversion" else 2
    model = build_radblur(cfg)
    image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    params = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)))["params"],
                            jax.random.key(0))
    tx = optax.adamw(1e-3, b1=0.9, b2=0.9, weight_decay=1e-3)
    opt_state = jax.eval_shape(tx.init, params)

    def train_step(params, opt_state, blurry, sharp):
        def loss_fn(p):
            out = model.apply({"params": p}, blurry)
            return (deblur_loss(out.restored, sharp)
                    + exit_cross_entropy(out.exit_logits, exit_labels(blurry, sharp)))
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.time()
    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
        params, opt_state, image, image).compile()
    mem = compiled.memory_analysis()
    return dict(K=num_sub_decoders, mode=mode, temp_mib=mem.temp_size_in_bytes / MiB,
                argument_mib=mem.argument_size_in_bytes / MiB,
                compile_s=time.time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="2,4,8")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for k in [int(v) for v in args.ks.split(",")]:
        for mode in ("plain", "reversible", "pure-inversion"):
            rows.append(train_step_memory(k, mode, args.size, args.batch))
            print(f"# K={k} {mode}: {rows[-1]['temp_mib']:.1f} MiB "
                  f"(compiled in {rows[-1]['compile_s']:.0f} s)", flush=True)
    temp = {(r["K"], r["mode"]): r["temp_mib"] for r in rows}
    kmin, kmax = min(r["K"] for r in rows), max(r["K"] for r in rows)
    print(f"\ntrain step temp memory, tiny preset, {args.size}x{args.size}, batch {args.batch}\n")
    print("| K | plain autodiff (MiB) | reversible, anchors every 2 (MiB) | pure inversion (MiB) |")
    print("|---|---|---|---|")
    for k in sorted({r["K"] for r in rows}):
        print(f"| {k} | {temp[(k, 'plain')]:.1f} | {temp[(k, 'reversible')]:.1f} | "
              f"{temp[(k, 'pure-inversion')]:.1f} |")
    summary = {}
    for mode in ("reversible", "pure-inversion"):
        summary[mode] = dict(
            growth=temp[(kmax, mode)] / temp[(kmin, mode)],
            vs_plain=temp[(kmax, mode)] / temp[(kmax, "plain")])
        print(f"\n{mode}: K={kmax} / K={kmin} = {summary[mode]['growth']:.2f}x; "
              f"K={kmax} vs plain = {100 * summary[mode]['vs_plain']:.0f}%")
    if args.json:
        write_json_atomic(args.json, dict(size=args.size, batch=args.batch, rows=rows,
                                          summary=summary))


if __name__ == "__main__":
    main()
