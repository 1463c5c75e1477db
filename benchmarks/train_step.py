"""Train-step speed of RADBlur presets (CPU or accelerator): step time, compile time, memory,
FLOP rate, and the step's counted FLOPs, bytes accessed and temporaries.

The step training runs: the deblur recipe of each preset (configs/deblur.py) with the batch,
crop and compute dtype given here, its task's gradients and update (radblur_jax/train/tasks:
deep-supervision + FFT loss, AdamW with clipping and the frozen exit head, EMA; the state
donated), built and compiled by the code the training loop uses (`DeblurTask.train_step`,
radblur_jax/train/split_step.py): on a CPU gradients and update as two programs compiled
concurrently (`--no_split`: one program). A change to the training step shows here.
`--conv_impl reference` trains the `lax` config in the formulation the lean step replaced
(reference_forms.py), to compare the two on an accelerator.
`compile_s` is the wall time until the step is ready (tracing, lowering and XLA compile;
`lower_s`, for one program, the tracing and lowering alone).
Prints a markdown table; `--json PATH` writes the rows (a JSON list, each with `preset`,
`dtype`, `conv_impl`, `size`, `batch` and the figures below); `--profile` adds a per-op
breakdown of one step's time from a `jax.profiler` trace.

    python benchmarks/train_step.py --presets tiny,s --dtypes float32 --batch 8 --size 128 \
        --steps 3 [--conv_impl auto|lax|fast|reference] [--json out.json] [--profile] \
        [--no_counts] [--compile-only] [--bytes-breakdown [N]] [--profile-compile [N]] \
        [--no_huge_pages] [--warmup N] [--no_split] [--remat recipe,none,encoder,stem,both] \
        [--layout recipe|flat|per_leaf]

Counted figures (per image, deterministic: nothing runs; `--compile-only` gives only these,
`--no_counts` skips them). XLA's cost analysis counts a loop body once, so every count is of
the step with the sub-decoder loop unrolled (`decoder.unroll`), which sees every sub-decoder:
- `bytes_accessed_per_image`, `temp_bytes_per_image`, `flops_executed_per_image`: the counted
  program, the training step as trained (reversible decoder on, split or one program as
  given) with the loop unrolled, compiled for the CPU: XLA's cost analysis `bytes accessed`
  and `flops` of the optimized programs (summed over the two halves) and the memory analysis's
  `temp_size_in_bytes` (the larger half's: they run in turn). The reversible backward's
  inversion and recomputation are in these: they are what the step moves and runs.
- `flops_per_image` (and `flops`, per step): the model's FLOPs, from the cost analysis of the
  same step lowered (not compiled) with plain autodiff instead of the reversible backward,
  so an MFU computed from it counts useful work only, and it does not change when the
  backward's schedule (anchors, remat) changes.
XLA's CPU backend widens bfloat16 to float32, so a bf16 row shows no saving in bytes here.
On an accelerator only the FLOPs are counted (from the CPU's lowering of the same step).
`--bytes-breakdown N` prints where the counted program's bytes go: its top-level ops (fusions,
library calls, copies) each charged its operands' and result's bytes, summed by Flax module
path (from the ops' `op_name` metadata), by op kind and per op (hlo_bytes.py), top N rows.

Timing figures (unless `--compile-only`): `step_s` median wall time of the timed steps,
`images_per_s`, `step_temp_bytes_per_image` the timed step's temporaries (the sub-decoder loop
as trained, a scan). `matmul_flops_per_s`: a matmul timed in the same run (2048^3 float32 on
a CPU, 8192^3 bfloat16 on an accelerator); `achieved_flops_per_s` = flops / step_s,
`flops_ratio` = achieved / matmul; `mfu` = achieved / the datasheet's dense peak (bf16 rows
on a known GPU); `peak_bytes`: the device's peak memory in use (accelerators). `step_cpu_s`:
process CPU seconds per step (all threads), less sensitive than wall time to other jobs on a
shared machine. `load_avg`: 1-minute load after timing (the benchmark's own threads
included); `steal_share`: the share of CPU time the hypervisor gave to other VMs while the
steps ran (/proc/stat). `huge_pages`: whether glibc's transparent-huge-page malloc was on (the
script re-executes itself with it unless `--no_huge_pages`; radblur_jax/host_memory.py).
`--profile` prints where one step's op time goes, by module (forward/backward and Flax module
path), op kind and op (xla_profile.py); `--profile-compile N` where the step's compile time
goes (XLA's compiler phases from a `jax.profiler` trace and the optimized programs' fusions by
the module that emitted them, top N; the JSON row's `compile_phases`); with `--compile-only`
it profiles the step as trained compiled from abstract shapes, without running it.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from step_counts import (  # noqa: E402
    CONV_IMPL_CHOICES,
    COUNTED,
    LAYOUT_CHOICES,
    REMAT_CHOICES,
    abstract_inputs,
    bench_config,
    compile_step,
    count_step,
    deblur_task,
    on_cpu,
    remat_name,
)
from xla_profile import print_profile, profile_compiled, profile_summary  # noqa: E402

from radblur_jax import host_memory  # noqa: E402
from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.models.configs import radblur_names  # noqa: E402

DTYPES = ("float32", "bfloat16")
def matmul_flops_per_s(n: int | None = None, reps: int = 5, dtype=None) -> float:
    """FLOP/s of an `n x n @ n x n` matmul (best of `reps`): the reference a run's speed is
    judged by. Defaults: float32 2048^3 on a CPU; bfloat16 8192^3 on an accelerator (its
    matrix units' practical peak; a smaller one is launch-bound there)."""
    n = n or (2048 if on_cpu() else 8192)
    dtype = dtype or (jnp.float32 if on_cpu() else jnp.bfloat16)
    a = jax.random.normal(jax.random.key(1), (n, n), dtype)
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


def profile_compile_only(preset: str, dtype: str, conv_impl: str | None, batch_size: int,
                         size: int, split: bool, top: int, remat: str = "recipe",
                         layout: str = "recipe") -> dict:
    """The step as trained (loops kept) compiled from abstract shapes under the tracer, nothing
    run: `compile_s` and `compile_phases` of a row."""
    task = deblur_task(bench_config(preset, dtype, conv_impl, batch_size, size, remat=remat,
                                    layout=layout), conv_impl)
    state, images, optimizers = abstract_inputs(task, batch_size, size)
    t0 = time.perf_counter()
    *_, profile = compile_step(task.train_step(optimizers, split=split), state, images, top)
    return dict(compile_s=time.perf_counter() - t0, compile_phases=profile)


def time_step(preset: str, dtype: str, conv_impl: str | None, batch_size: int, size: int,
              steps: int, matmul_rate: float, profile: bool, warmup: int = 1,
              split: bool = True, compile_profile: int = 0, remat: str = "recipe",
              layout: str = "recipe") -> dict:
    """Compiles and times the train step training runs (the sub-decoder scan as trained);
    returns the timing part of a row. `compile_profile` > 0 traces the compile and prints its
    top phases (xla_profile.compile_phases)."""
    config = bench_config(preset, dtype, conv_impl, batch_size, size, remat=remat,
                          layout=layout)
    task = deblur_task(config, conv_impl)
    params = task.load_initial_params(jax.random.key(0))
    optimizers = task.make_optimizers(params)
    state = task.create_state(params, optimizers, jax.random.key(1))
    rng = np.random.default_rng(0)
    sharp = jnp.asarray(rng.random((batch_size, size, size, 3), np.float32))
    blurry = jnp.asarray(np.clip(np.asarray(sharp) + 0.05 * rng.standard_normal(sharp.shape),
                                 0, 1).astype(np.float32))
    batch = {"blur": blurry, "sharp": sharp}
    t0, c0 = time.perf_counter(), time.process_time()
    step, executables, lower_s, phases = compile_step(task.train_step(optimizers, split=split),
                                                      state, batch, compile_profile)
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
    row = dict(steps=steps, warmup=warmup, step_s=step_s, step_min_s=float(min(times)),
               step_cpu_s=float(np.median(cpu_times)), compile_s=compile_s, lower_s=lower_s,
               compile_cpu_s=compile_cpu_s, images_per_s=batch_size / step_s,
               step_temp_bytes_per_image=temp_bytes / batch_size,
               matmul_flops_per_s=matmul_rate, loss=float(metrics["loss"]),
               huge_pages=host_memory.huge_pages_enabled(), load_avg=os.getloadavg()[0],
               steal_share=(steal1 - steal0) / max(total1 - total0, 1))
    if phases:
        row["compile_phases"] = phases
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: the step's real peak on the device
        row["peak_bytes"] = int(stats["peak_bytes_in_use"])
    if profile:
        holder = [state]

        def run_once():
            holder[0], m = step(holder[0], batch)
            m["loss"].block_until_ready()
        result = profile_compiled(executables, run_once)
        print_profile(result)
        row["profile"] = profile_summary(result)
    return row


def bench(preset: str, dtype: str, conv_impl: str | None, batch_size: int, size: int,
          steps: int, matmul_rate: float, profile: bool, flops: bool = True, warmup: int = 1,
          split: bool = True, timed: bool = True, breakdown: int = 0,
          compile_profile: int = 0, remat: str = "recipe", layout: str = "recipe") -> dict:
    """One result row: timing of the train step (unless not `timed`) and its counted figures
    (unless not `flops`)."""
    config = bench_config(preset, dtype, conv_impl, batch_size, size, remat=remat,
                          layout=layout)
    row = dict(preset=preset, dtype=dtype, conv_impl=conv_impl or "default", batch=batch_size,
               size=size, split=split, remat=remat_name(config),
               layout=config.optimizer.layout)
    if timed:
        row.update(time_step(preset, dtype, conv_impl, batch_size, size, steps, matmul_rate,
                             profile, warmup, split, compile_profile, remat, layout))
    elif compile_profile:
        row.update(profile_compile_only(preset, dtype, conv_impl, batch_size, size, split,
                                        compile_profile, remat, layout))
    if flops:
        row.update(count_step(preset, dtype, conv_impl, batch_size, size, split, breakdown,
                              remat, layout))
        if timed:
            row.update(achieved_flops_per_s=row["flops"] / row["step_s"],
                       flops_ratio=row["flops"] / row["step_s"] / matmul_rate)
            peak = datasheet_peak(dtype)
            if peak:
                row["mfu"] = row["achieved_flops_per_s"] / peak
    return row


# Dense matrix-unit peaks by the vendors' datasheets (FLOP/s), by device kind and dtype.
DATASHEET_PEAKS = {("H100", "bfloat16"): 989e12, ("H200", "bfloat16"): 989e12}


def datasheet_peak(dtype: str) -> float | None:
    """The datasheet peak of this device kind for `dtype`, when known: MFU's denominator."""
    kind = jax.devices()[0].device_kind
    return next((v for (k, d), v in DATASHEET_PEAKS.items() if k in kind and d == dtype), None)


def _gib(v: float) -> str:
    return f"{v / 2 ** 30:.4g}"


# (header, key, format) of the printed table; rows lacking a key leave the column out.
COLUMNS = (
    ("preset", "preset", str), ("dtype", "dtype", str), ("conv", "conv_impl", str),
    ("split", "split", lambda v: "yes" if v else "no"), ("batch", "batch", str),
    ("size", "size", str),
    ("remat", "remat", str), ("optimizer", "layout", str),
    ("GFLOP/img", "flops_per_image", lambda v: f"{v / 1e9:.4g}"),
    ("GFLOP/img executed", "flops_executed_per_image", lambda v: f"{v / 1e9:.4g}"),
    ("GiB accessed/img", "bytes_accessed_per_image", _gib),
    ("temp GiB/img", "temp_bytes_per_image", _gib),
    ("step s", "step_s", lambda v: f"{v:.3f}"), ("compile s", "compile_s", lambda v: f"{v:.1f}"),
    ("of which trace+lower s", "lower_s", lambda v: "" if v is None else f"{v:.1f}"),
    ("img/s", "images_per_s", lambda v: f"{v:.2f}"),
    ("step temp MiB/img", "step_temp_bytes_per_image", lambda v: f"{v / 2 ** 20:.1f}"),
    ("GFLOP/s", "achieved_flops_per_s", lambda v: f"{v / 1e9:.1f}"),
    ("matmul GFLOP/s", "matmul_flops_per_s", lambda v: f"{v / 1e9:.1f}"),
    ("ratio", "flops_ratio", lambda v: f"{v:.3f}"),
    ("MFU", "mfu", lambda v: f"{100 * v:.1f}%"),
    ("peak GiB", "peak_bytes", _gib),
    ("CPU s/step", "step_cpu_s", lambda v: f"{v:.2f}"), ("load", "load_avg", lambda v: f"{v:.2f}"),
    ("steal", "steal_share", lambda v: f"{100 * v:.1f}%"),
    ("huge pages", "huge_pages", lambda v: "on" if v else "off"),
)


def print_table(rows: list[dict]) -> None:
    """The rows as one markdown table (the columns some row has)."""
    columns = [c for c in COLUMNS if any(c[1] in r for r in rows)]
    print("\n| " + " | ".join(h for h, _, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(f(r[k]) if k in r else "" for _, k, f in columns) + " |")
    if any("counted" in r for r in rows):
        print(f"\nGFLOP/img: the model's (plain autodiff); executed, GiB accessed, temp: "
              f"{rows[0].get('counted', COUNTED)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps before the timed ones (0: time a slow step once)")
    parser.add_argument("--conv_impl", default=None, choices=CONV_IMPL_CHOICES,
                        help="convolution implementation (default: the config's); "
                             "reference: lax in the formulation the lean step replaced")
    parser.add_argument("--remat", default="recipe",
                        help="comma-separated: blocks that recompute their activations in the "
                             "backward, the ViT's (encoder), the blur stem's (stem), both, "
                             "none, or the preset's recipe (default); a row each")
    parser.add_argument("--layout", default="recipe", choices=LAYOUT_CHOICES,
                        help="optimizer.layout: Adam's moments as one vector or per leaf "
                             "(default: the preset's recipe)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no_split", action="store_true",
                        help="compile the step as one program (default: gradients and update "
                             "as two, compiled concurrently, as training on a CPU runs it)")
    parser.add_argument("--profile", action="store_true",
                        help="per-op breakdown of one step (by module, op kind and op)")
    parser.add_argument("--profile-compile", "--profile_compile", dest="profile_compile",
                        type=int, nargs="?", const=30, default=0, metavar="N",
                        help="trace the step's compile and print where its time goes (XLA's "
                             "phases and the fusions by module, top N, default 30; the tracer "
                             "adds to compile_s); with --compile-only the step as trained is "
                             "compiled from abstract shapes, nothing run")
    parser.add_argument("--compile-only", "--compile_only", dest="compile_only",
                        action="store_true",
                        help="only the counted figures (FLOPs, bytes, temporaries): no timing")
    parser.add_argument("--bytes-breakdown", "--bytes_breakdown", dest="bytes_breakdown",
                        type=int, nargs="?", const=25, default=0, metavar="N",
                        help="print the counted program's bytes by module, op kind and op "
                             "(top N, default 25)")
    parser.add_argument("--no_counts", "--no_flops", dest="no_counts", action="store_true",
                        help="skip the counted figures (an unrolled lowering and compile)")
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
    remats = [r for r in args.remat.split(",") if r]
    for r in remats:
        if r not in REMAT_CHOICES:
            parser.error(f"--remat: unknown {r!r}; expected some of {REMAT_CHOICES}")
    if args.batch < 1 or args.steps < 1 or args.size < 16 or args.size % 16:
        parser.error("--batch and --steps must be >= 1, --size a multiple of 16")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.compile_only and args.no_counts and not args.profile_compile:
        parser.error("--compile-only with --no_counts leaves nothing to do")
    if args.bytes_breakdown < 0:
        parser.error(f"--bytes-breakdown must be >= 1, got {args.bytes_breakdown}")
    print(f"# {jax.devices()[0].platform}, load {os.getloadavg()}, huge-page malloc "
          f"{'on' if host_memory.huge_pages_enabled() else 'off'}", flush=True)
    rate = float("nan") if args.compile_only else matmul_flops_per_s()
    rows = []
    for preset, dtype, remat in itertools.product(presets, dtypes, remats):
        row = bench(preset, dtype, args.conv_impl, args.batch, args.size, args.steps, rate,
                    args.profile, flops=not args.no_counts, warmup=args.warmup,
                    split=not args.no_split, timed=not args.compile_only,
                    breakdown=args.bytes_breakdown, compile_profile=args.profile_compile,
                    remat=remat, layout=args.layout)
        rows.append(row)
        done = [f"{k} {row[k]:.1f} s" for k in ("step_s", "compile_s", "counted_compile_s")
                if k in row]
        print(f"# {preset} {dtype} remat {row['remat']}: {', '.join(done)}, "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    print_table(rows)
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
