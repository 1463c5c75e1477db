"""The deblur train step as the benchmarks build it (a preset's recipe with a batch, crop,
dtype, convolution form and remat) and its counted figures: FLOPs, bytes accessed and
temporaries from XLA's cost and memory analyses (train_step.py's docstring says what each
counts). Used by train_step.py and peak_memory.py."""
from __future__ import annotations

import functools
import os
import sys
import time

import jax
import jax.numpy as jnp

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from flops import cpu_cost_analysis  # noqa: E402
from hlo_bytes import bytes_breakdown, print_bytes_breakdown  # noqa: E402
from xla_profile import compile_phases, fusions_by_module, print_compile_phases  # noqa: E402

from radblur_jax.train.config_base import check_config, load_config  # noqa: E402
from radblur_jax.train.optimizer import LAYOUT_CHOICES as OPTIMIZER_LAYOUTS  # noqa: E402
from radblur_jax.train.split_step import SplitStep, compose  # noqa: E402
from radblur_jax.train.tasks import DeblurTask  # noqa: E402

COUNTED = ("the training step with the reversible decoder, sub-decoder loop unrolled, "
           "compiled for the CPU")


# --remat: which blocks recompute their activations in the backward pass, as
# (model.encoder.remat, model.decoder.stem_remat); "recipe" keeps the preset's.
REMAT = {"none": (False, False), "encoder": (True, False), "stem": (False, True),
         "both": (True, True)}
REMAT_CHOICES = ("recipe", *REMAT)
# --layout: the optimiser's moments (optimizer.layout); "recipe" keeps the preset's.
LAYOUT_CHOICES = ("recipe", *OPTIMIZER_LAYOUTS)
# --conv_impl: the config's forms, or "reference": the lax config computed with the
# formulation the lean step replaced (reference_forms.py).
CONV_IMPL_CHOICES = ("auto", "lax", "fast", "reference")


def remat_name(config) -> str:
    """The `REMAT` name of `config.model`'s remat switches."""
    switches = (bool(config.model.encoder.remat),
                bool(config.model.decoder.get("stem_remat", False)))
    return next(name for name, value in REMAT.items() if value == switches)


def bench_config(preset: str, dtype: str, conv_impl: str | None, batch: int, size: int, *,
                 reversible: bool = True, unroll: bool = False, remat: str = "recipe",
                 layout: str = "recipe"):
    """The preset's training config (configs/deblur.py) with this batch, crop, compute dtype
    (and convolution implementation when given, "lax" for "reference"; remat as `REMAT`
    says and the optimiser's moments as `layout` says unless "recipe"); checked as training
    checks it."""
    config = load_config(os.path.join(REPO, "configs", "deblur.py"), preset)
    config.model.dtype = dtype
    if conv_impl is not None:
        config.model.conv_impl = "lax" if conv_impl == "reference" else conv_impl
    if remat != "recipe":
        config.model.encoder.remat, config.model.decoder.stem_remat = REMAT[remat]
    if layout != "recipe":
        config.optimizer.layout = layout
    config.model.decoder.reversible = reversible
    config.model.decoder.unroll = unroll
    config.train.batch_size, config.input.crop_size = batch, size
    check_config(config)
    return config


def deblur_task(config, conv_impl: str | None = None) -> DeblurTask:
    """The task of `config`; for `conv_impl` "reference", one whose model computes with
    `reference_forms.REFERENCE` (the config's `bench_config` made for "lax")."""
    if conv_impl == "reference":
        from reference_forms import ReferenceDeblurTask
        return ReferenceDeblurTask(config)
    return DeblurTask(config)


def abstract_inputs(task: DeblurTask, batch: int, size: int):
    """(abstract state, abstract batch, optimizers) of `task` at this batch and crop."""
    rng = jax.random.key(0)
    params = jax.eval_shape(task.init_params, rng)
    optimizers = task.make_optimizers(params)
    state = jax.eval_shape(lambda p, r: task.create_state(p, optimizers, r), params, rng)
    image = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return state, {"blur": image, "sharp": image}, optimizers


def on_cpu() -> bool:
    """Whether JAX's default backend is the CPU."""
    return jax.default_backend() == "cpu"


def count_flops(preset: str, dtype: str, conv_impl: str | None, batch: int, size: int) -> float:
    """The model's FLOPs of one train step (whole batch): XLA's cost analysis of the CPU lowering
    with no loops (sub-decoder scan unrolled, XLA's plain attention) and plain autodiff (no
    reversible recomputation)."""
    config = bench_config(preset, dtype, conv_impl, batch, size, reversible=False, unroll=True)
    # The loop-free attention (same maths): the CPU's blocked form loops over heads, and the
    # cost analysis would count one loop body (benchmarks/flops.py).
    config.model.encoder.attention_impl = "xla"
    task = deblur_task(config, conv_impl)
    state, images, optimizers = abstract_inputs(task, batch, size)
    step = functools.partial(compose, task.gradients, task.update(optimizers))
    return float(cpu_cost_analysis(step, state, images)["flops"])


def compile_counted(preset: str, dtype: str, conv_impl: str | None, batch: int, size: int,
                    split: bool = True, remat: str = "recipe", layout: str = "recipe") -> tuple:
    """The executables of the counted program: the training step as the loop builds it
    (reversible decoder, split or one program), the sub-decoder scan unrolled; compiled from
    abstract shapes (nothing runs)."""
    task = deblur_task(bench_config(preset, dtype, conv_impl, batch, size, reversible=True,
                                    unroll=True, remat=remat, layout=layout), conv_impl)
    state, images, optimizers = abstract_inputs(task, batch, size)
    return compile_step(task.train_step(optimizers, split=split), state, images)[1]


def compiled_counts(executables, batch: int) -> dict:
    """Per-image figures of compiled programs run one after the other: FLOPs executed and bytes
    accessed (XLA cost analysis, summed) and temporaries (memory analysis: the largest
    program's temp buffer, since the programs run in turn)."""
    flops = accessed = 0.0
    for e in executables:
        cost = e.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops += float(cost["flops"])
        accessed += float(cost["bytes accessed"])
    temp = max(e.memory_analysis().temp_size_in_bytes for e in executables)
    return dict(flops_executed_per_image=flops / batch, bytes_accessed_per_image=accessed / batch,
                temp_bytes_per_image=temp / batch)



def compile_step(step, state, batch, profile_top: int = 0) -> tuple:
    """Compiles `step` (a `SplitStep` or a jitted function) for `state` and `batch` (arrays or
    abstract shapes): `(callable step, executables, lower_s or None, compile profile or None)`.
    With `profile_top` > 0 the compile runs under the tracer and its phases and the programs'
    fusions by module are printed (top rows) and returned (xla_profile.py)."""
    t0 = time.perf_counter()
    lower_s = None
    if isinstance(step, SplitStep):
        compile_fn = functools.partial(step.compile, state, batch)
    else:
        lowered = step.lower(state, batch)
        lower_s = time.perf_counter() - t0
        compile_fn = lowered.compile
    profile = None
    if profile_top:
        compiled, profile = compile_phases(compile_fn)
    else:
        compiled = compile_fn()
    if isinstance(step, SplitStep):
        executables = compiled.executables
    else:
        step, executables = compiled, (compiled,)
    if profile:
        profile["phases"] = profile["phases"][:max(profile_top, 40)]
        profile["fusions"] = fusions_by_module([e.as_text() for e in executables])
        print_compile_phases(profile, profile_top)
    return step, executables, lower_s, profile



def count_step(preset: str, dtype: str, conv_impl: str | None, batch_size: int, size: int,
               split: bool = True, breakdown: int = 0, remat: str = "recipe",
               layout: str = "recipe") -> dict:
    """The counted figures of a row (module docstring); with `breakdown` > 0 prints the
    counted program's bytes by module, op kind and op (top `breakdown` rows) and adds them.
    Off the CPU only the FLOPs (counted from the CPU's lowering): the bytes and temporaries
    are those of the CPU's compiled program."""
    row = {}
    if on_cpu():
        t0 = time.perf_counter()
        executables = compile_counted(preset, dtype, conv_impl, batch_size, size, split, remat,
                                      layout)
        row = dict(counted=COUNTED + (" (gradients and update programs)" if split else ""),
                   counted_compile_s=time.perf_counter() - t0,
                   **compiled_counts(executables, batch_size))
    flops = count_flops(preset, dtype, conv_impl, batch_size, size)
    row.update(flops=flops, flops_per_image=flops / batch_size)
    if breakdown and on_cpu():
        result = bytes_breakdown(executables)
        print(f"\n# {preset} {dtype} {conv_impl or 'default'}, batch {batch_size}, {size}x{size}")
        print_bytes_breakdown(result, top=breakdown, per=batch_size)
        row["bytes_breakdown"] = dict(
            estimated_per_image=result["estimated"] / batch_size,
            cost_analysis_per_image=result["cost_analysis"] / batch_size,
            **{k: [dict(r, bytes=r["bytes"] / batch_size) for r in result[k][:n]]
               for k, n in (("modules", max(breakdown, 40)), ("kinds", 20),
                            ("ops", max(breakdown, 40)))})
    return row
