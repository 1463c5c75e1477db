"""CPU train-step speed of RADBlur presets: step time, compile time, memory, FLOP rate.

The step training runs: the deblur recipe of each preset (configs/deblur.py) with the batch,
crop and compute dtype given here, its task's gradients and update (radblur_jax/train/tasks:
deep-supervision + FFT loss, AdamW with clipping and the frozen exit head, EMA; the state
donated), built and compiled by the code the training loop uses (`DeblurTask.train_step`,
radblur_jax/train/split_step.py): on a CPU gradients and update as two programs compiled
concurrently (`--no_split`: one program). A change to the training step shows here.
`compile_s` is the wall time until the step is ready (tracing, lowering and XLA compile).
Prints a markdown table; `--json PATH` writes the rows (a JSON list); `--profile` adds a
per-op breakdown of one step from a `jax.profiler` trace.

    python benchmarks/train_step.py --presets tiny,s --dtypes float32 --batch 8 --size 128 \
        --steps 3 [--conv_impl auto|lax|fast] [--json out.json] [--profile] [--no_flops] \
        [--no_huge_pages] [--warmup N] [--no_split]

`flops`: XLA's cost analysis of the same step lowered for the CPU with the sub-decoder scan
unrolled and plain autodiff (the reversible backward's recomputation is not counted: these are
the model's FLOPs). `matmul_flops_per_s`: a 2048^3 float32 matmul timed in the same run;
`flops_ratio` = achieved / matmul. `step_cpu_s`: process CPU seconds per step (all threads),
less sensitive than wall time to other jobs on a shared machine. `load_avg`: 1-minute load
after timing (the benchmark's own threads included); `steal_share`: the share of CPU time the
hypervisor gave to other VMs while the steps ran (/proc/stat). `huge_pages`: whether glibc's
transparent-huge-page malloc was on (the script re-executes itself with it unless
`--no_huge_pages`; radblur_jax/host_memory.py). `--profile` prints where one step's op time
goes, by module (forward/backward and Flax module path), op kind and op (xla_profile.py).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from xla_profile import print_profile, profile_compiled  # noqa: E402

from radblur_jax import host_memory  # noqa: E402
from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.models.configs import radblur_names  # noqa: E402
from radblur_jax.train.config_base import check_config, load_config  # noqa: E402
from radblur_jax.train.split_step import SplitStep, compose  # noqa: E402
from radblur_jax.train.tasks import DeblurTask  # noqa: E402

DTYPES = ("float32", "bfloat16")


def bench_config(preset: str, dtype: str, conv_impl: str | None, batch: int, size: int, *,
                 reversible: bool = True, unroll: bool = False):
    """The preset's training config (configs/deblur.py) with this batch, crop, compute dtype
    (and convolution implementation when given); checked as training checks it."""
    config = load_config(os.path.join(REPO, "configs", "deblur.py"), preset)
    config.model.dtype = dtype
    if conv_impl is not None:
        config.model.conv_impl = conv_impl
    config.model.decoder.reversible = reversible
    config.model.decoder.unroll = unroll
    config.train.batch_size, config.input.crop_size = batch, size
    check_config(config)
    return config


def _abstract(task: DeblurTask, batch: int, size: int):
    """(abstract state, abstract batch, optimizers) of `task` at this batch and crop."""
    rng = jax.random.key(0)
    params = jax.eval_shape(task.init_params, rng)
    optimizers = task.make_optimizers(params)
    state = jax.eval_shape(lambda p, r: task.create_state(p, optimizers, r), params, rng)
    image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return state, {"blur": image, "sharp": image}, optimizers


def count_flops(preset: str, dtype: str, conv_impl: str | None, batch: int, size: int) -> float:
    """FLOPs of one train step from the CPU lowering (scan unrolled, plain autodiff)."""
    task = DeblurTask(bench_config(preset, dtype, conv_impl, batch, size, reversible=False,
                                   unroll=True))
    state, images, optimizers = _abstract(task, batch, size)
    step = functools.partial(compose, task.gradients, task.update(optimizers))
    cost = jax.jit(step).lower(state, images).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an `n x n @ n x n` float32 matmul (best of `reps`)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        mm(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat, (0, 0) where there is none: the
    share of time a hypervisor gave this VM's CPUs to others during a measurement."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def bench(preset: str, dtype: str, conv_impl: str | None, batch_size: int, size: int,
          steps: int, matmul_rate: float, profile: bool, flops: bool = True, warmup: int = 1,
          split: bool = True) -> dict:
    """Compiles and times the train step; returns one result row."""
    config = bench_config(preset, dtype, conv_impl, batch_size, size)
    task = DeblurTask(config)
    params = task.load_initial_params(jax.random.key(0))
    optimizers = task.make_optimizers(params)
    state = task.create_state(params, optimizers, jax.random.key(1))
    rng = np.random.default_rng(0)
    sharp = jnp.asarray(rng.random((batch_size, size, size, 3), np.float32))
    blurry = jnp.asarray(np.clip(np.asarray(sharp) + 0.05 * rng.standard_normal(sharp.shape),
                                 0, 1).astype(np.float32))
    batch = {"blur": blurry, "sharp": sharp}
    t0, c0 = time.perf_counter(), time.process_time()
    step = task.train_step(optimizers, split=split)
    if isinstance(step, SplitStep):
        executables = step.compile(state, batch).executables
    else:
        step = step.lower(state, batch).compile()
        executables = (step,)
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    # The halves run one after the other: the step's peak is the larger temp buffer.
    temp_bytes = max(e.memory_analysis().temp_size_in_bytes for e in executables)
    for _ in range(warmup):
        state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
    times, cpu_times = [], []
    steal0, total0 = cpu_jiffies()
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch)
        metrics["loss"].block_until_ready()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    steal1, total1 = cpu_jiffies()
    step_s = float(np.median(times))
    flops = count_flops(preset, dtype, conv_impl, batch_size, size) if flops else float("nan")
    row = dict(preset=preset, dtype=dtype, conv_impl=conv_impl or "default", batch=batch_size,
               size=size, split=split, remat=bool(config.model.encoder.remat), steps=steps,
               warmup=warmup, step_s=step_s,
               step_min_s=float(min(times)), step_cpu_s=float(np.median(cpu_times)),
               compile_s=compile_s, compile_cpu_s=compile_cpu_s,
               images_per_s=batch_size / step_s, temp_bytes_per_image=temp_bytes / batch_size,
               flops=flops, achieved_flops_per_s=flops / step_s, matmul_flops_per_s=matmul_rate,
               flops_ratio=flops / step_s / matmul_rate, loss=float(metrics["loss"]),
               huge_pages=host_memory.huge_pages_enabled(), load_avg=os.getloadavg()[0],
               steal_share=(steal1 - steal0) / max(total1 - total0, 1))
    if profile:
        holder = [state]

        def run_once():
            holder[0], m = step(holder[0], batch)
            m["loss"].block_until_ready()
        result = profile_compiled(executables, run_once)
        print_profile(result)
        row["profile"] = dict(total_ms=result["total_ms"], modules=result["modules"][:40],
                              kinds=result["kinds"][:20], ops=result["ops"][:40])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps before the timed ones (0: time a slow step once)")
    parser.add_argument("--conv_impl", default=None, choices=("auto", "lax", "fast"),
                        help="convolution implementation (default: the config's)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no_split", action="store_true",
                        help="compile the step as one program (default: gradients and update "
                             "as two, compiled concurrently, as training on a CPU runs it)")
    parser.add_argument("--profile", action="store_true",
                        help="per-op breakdown of one step (by module, op kind and op)")
    parser.add_argument("--no_flops", action="store_true",
                        help="skip the FLOP count (a second, unrolled compile)")
    parser.add_argument("--no_huge_pages", action="store_true",
                        help="run without glibc's transparent-huge-page malloc "
                             "(radblur_jax/host_memory.py)")
    args = parser.parse_args()
    if args.no_huge_pages:
        os.environ[host_memory.OPT_OUT] = "0"
    host_memory.reexec_with_huge_pages()
    presets = [p for p in args.presets.split(",") if p]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for p in presets:
        if p not in radblur_names():
            parser.error(f"--presets: unknown preset {p!r}; expected some of {radblur_names()}")
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"--dtypes: unknown dtype {d!r}; expected some of {DTYPES}")
    if args.batch < 1 or args.steps < 1 or args.size < 16 or args.size % 16:
        parser.error("--batch and --steps must be >= 1, --size a multiple of 16")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    print(f"# {jax.devices()[0].platform}, load {os.getloadavg()}, huge-page malloc "
          f"{'on' if host_memory.huge_pages_enabled() else 'off'}", flush=True)
    rate = matmul_flops_per_s()
    rows = []
    for preset in presets:
        for dtype in dtypes:
            row = bench(preset, dtype, args.conv_impl, args.batch, args.size, args.steps, rate,
                        args.profile, flops=not args.no_flops, warmup=args.warmup,
                        split=not args.no_split)
            rows.append(row)
            print(f"# {preset} {dtype}: step {row['step_s']:.3f} s, compile "
                  f"{row['compile_s']:.1f} s, load {row['load_avg']:.2f}", flush=True)
    print("\n| preset | dtype | conv | split | batch | size | step s | compile s | img/s "
          "| temp MiB/img | GFLOP | GFLOP/s | matmul GFLOP/s | ratio | CPU s/step | load | steal "
          "| huge pages |")
    print("|" + "---|" * 18)
    for r in rows:
        split = "yes" if r["split"] else "no"
        print(f"| {r['preset']} | {r['dtype']} | {r['conv_impl']} | {split} | {r['batch']} "
              f"| {r['size']} "
              f"| {r['step_s']:.3f} | {r['compile_s']:.1f} | {r['images_per_s']:.2f} "
              f"| {r['temp_bytes_per_image'] / 2 ** 20:.1f} | {r['flops'] / 1e9:.1f} "
              f"| {r['achieved_flops_per_s'] / 1e9:.1f} | {r['matmul_flops_per_s'] / 1e9:.1f} "
              f"| {r['flops_ratio']:.3f} | {r['step_cpu_s']:.2f} | {r['load_avg']:.2f} "
              f"| {100 * r['steal_share']:.1f}% | {'on' if r['huge_pages'] else 'off'} |")
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
