"""The train step on a device mesh: the collectives its compiled programs hold, what they move,
and the step's compile and run time, per mesh shape.

    python benchmarks/mesh_step.py --presets tiny --meshes 8x1,4x2 --batch 16 --size 64 \
        [--devices 8] [--dtype float32] [--conv_impl auto|lax|fast] [--steps 3] \
        [--compile-only] [--json out.json]

Each mesh `DxF` is `config.mesh.data=D`, `config.mesh.fsdp=F` (the batch split over both, the
preset's sharding rules for the state); the step is the one training compiles
(`DeblurTask.train_step` with the loop's shardings: on a CPU its gradients and update as two
programs). `--devices N` simulates N CPU devices (`--xla_force_host_platform_device_count`).

Per program (`gradients`, `update`, or `step` for one program): the count of each collective
in XLA's optimized HLO and `MiB`, the bytes of their results per device and step (for a
`-start` op of an asynchronous collective, its largest result array). An all-reduce of the
gradients is what data parallelism needs; all-gathers of parameters and reduce-scatters what
FSDP adds; anything moving activations (an all-gather of a batch, a collective-permute) is a
partitioning the model should not need (tests/sharding_check.py). Timing: `compile_s` until the
step can run, `step_s` the median of `--steps` steps after one untimed step, on random
parameters and batches. On simulated devices the timing shows the programs' work, not a
network's. `--json PATH` writes the rows, each with `preset`, `mesh`, `batch`, `size`,
`collectives` (`{program: {kind: {count, bytes}}}`) and the timings.
"""
from __future__ import annotations

import argparse
import os
import re
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny")
    p.add_argument("--meshes", default="8x1,4x2", help="DATAxFSDP, comma separated")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--devices", type=int, default=0, help="simulated CPU devices (0: as is)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--conv_impl", default=None, choices=("auto", "lax", "fast"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--compile-only", dest="compile_only", action="store_true")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.devices:  # before jax is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={ARGS.devices}")

import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hlo_bytes import shape_bytes  # noqa: E402
from step_counts import abstract_inputs, bench_config, compile_step  # noqa: E402

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.train import sharding, split_step  # noqa: E402
from radblur_jax.train.tasks import DeblurTask  # noqa: E402

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(r"=\s+(\(.*?\)|\S+)\s+(" + "|".join(KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\w+\[[\d,]*\]")


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """`{kind: {count, bytes}}` of the collectives in an optimized HLO text; bytes are the
    results' per device (an async `-start` op: its largest result array)."""
    out = {k: dict(count=0, bytes=0) for k in KINDS}
    for shape, kind, start in _INSTRUCTION.findall(hlo):
        sizes = [shape_bytes(array) for array in _ARRAY.findall(shape)]
        out[kind]["count"] += 1
        out[kind]["bytes"] += (max(sizes, default=0) if start else sum(sizes))
    return {k: v for k, v in out.items() if v["count"]}


def mesh_row(preset: str, data: int, fsdp: int, args: argparse.Namespace) -> dict:
    """One row: the preset's step compiled (and, unless `--compile-only`, run) on a
    `data` x `fsdp` mesh, with its programs' collectives."""
    config = bench_config(preset, args.dtype, args.conv_impl, args.batch, args.size)
    config.mesh.data, config.mesh.fsdp = data, fsdp
    task = DeblurTask(config)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(args.batch, mesh, config.mesh.batch_axes)
    state, images, optimizers = abstract_inputs(task, args.batch, args.size)
    shardings = sharding.step_shardings(state, mesh, config)
    state_sh, batch_sh, _ = shardings
    step = task.train_step(optimizers, split=split_step.use_split_step(config.train.split_step),
                           shardings=shardings)
    batch = sharding.with_shardings(images, {k: batch_sh for k in images})
    t0 = time.perf_counter()
    step, executables, _, _ = compile_step(step, sharding.with_shardings(state, state_sh), batch)
    row = dict(preset=preset, mesh=f"{data}x{fsdp}", devices=mesh.size, batch=args.batch,
               size=args.size, dtype=args.dtype, conv_impl=config.model.conv_impl,
               compile_s=time.perf_counter() - t0)
    names = ("gradients", "update") if len(executables) == 2 else ("step",)
    row["collectives"] = {n: collectives(e.as_text()) for n, e in zip(names, executables)}
    if not args.compile_only:
        rng = jax.random.key(0)
        params = jax.jit(task.init_params, out_shardings=state_sh.params)(rng)
        live = jax.jit(lambda p, r: task.create_state(p, optimizers, r),
                       out_shardings=state_sh)(params, rng)
        keys = jax.random.split(jax.random.key(1), len(batch))
        arrays = {k: jax.device_put(jax.random.uniform(r, v.shape, v.dtype), batch_sh)
                  for r, (k, v) in zip(keys, batch.items())}
        times = []
        for i in range(args.steps + 1):
            t0 = time.perf_counter()
            live, metrics = step(live, arrays)
            jax.block_until_ready(metrics)
            if i:
                times.append(time.perf_counter() - t0)
        row.update(step_s=float(np.median(times)), images_per_s=args.batch / np.median(times))
    return row


def print_table(rows: list[dict]) -> None:
    print("| preset | mesh | batch x crop | program | collectives (count, MiB per device) | "
          "compile s | step s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for i, (program, kinds) in enumerate(r["collectives"].items()):
            moved = ", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:.2f})"
                              for k, v in kinds.items()) or "none"
            timing = (f"{r['compile_s']:.1f} | {r['step_s']:.3f}" if "step_s" in r
                      else f"{r['compile_s']:.1f} | ") if i == 0 else " | "
            print(f"| {r['preset']} | {r['mesh']} | {r['batch']} x {r['size']} | {program} | "
                  f"{moved} | {timing} |")


def main(args: argparse.Namespace) -> None:
    meshes = [tuple(int(n) for n in m.split("x")) for m in args.meshes.split(",")]
    rows = [mesh_row(preset, d, f, args) for preset in args.presets.split(",")
            for d, f in meshes]
    print(f"\n{jax.device_count()} {jax.devices()[0].device_kind} devices, jax {jax.__version__}")
    print_table(rows)
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main(ARGS)
