"""The train step as the loop (and the benchmark) compiles it: one program, or two.

XLA:CPU compiles one program on one core: tracing, lowering and the HLO passes are serial, and a
second core helps only during code generation. Split at the gradient, the step is two programs
that compile in parallel threads: the backward pass, and the optimiser update (one kernel per
parameter leaf and moment). Together they compute what the one-program step computes; the
gradients pass between them as one extra buffer per parameter (freed after the update; not
donated, since no output of the update could reuse them).

    step = train_step(gradients, update, split=use_split_step("auto"), shardings=shardings)
    state, metrics = step(state, batch)   # compiles on the first call

`gradients(state, batch) -> (grads, metrics)`, `update(state, grads) -> (state, metrics)`;
grads are shaped (and sharded) like `state.params` (`params_of(state)`). Shapes are fixed by
the first call. `use_split_step(choice)` resolves the `train.split_step` config ("auto": on
the CPU backend, where compile time is the cost; GPU/TPU keep one program, so XLA may overlap
the update with the backward pass). With shardings, the programs trace on their mesh
(`models.spmd.on_mesh`), so the model's FFTs and the CPU's attention run on each device's
part of the batch.
"""
from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from radblur_jax.models.configs import check_choice
from radblur_jax.models.spmd import batch_axes_of, on_mesh

SPLIT_STEP_CHOICES = ("auto", "on", "off")


class StepShardings(NamedTuple):
    """Shardings of a step's state, batch and (replicated) metrics."""
    state: Any
    batch: Any
    metrics: Any


def use_split_step(choice: str) -> bool:
    """Whether `train.split_step = choice` splits the step on this backend."""
    check_choice("train.split_step", choice, SPLIT_STEP_CHOICES)
    return choice == "on" or (choice == "auto" and jax.default_backend() == "cpu")


def compose(gradients: Callable, update: Callable, state: Any, batch: Any) -> tuple[Any, dict]:
    """One train step: `gradients(state, batch)`, then `update(state, grads)`; the metrics of
    both in one dict."""
    grads, metrics = gradients(state, batch)
    state, extra = update(state, grads)
    return state, {**metrics, **extra}


def compile_concurrently(jobs: list[tuple[Callable, tuple]]) -> list[Any]:
    """`[jitted.lower(*args).compile() for jitted, args in jobs]`, one thread per job (XLA
    compiles outside the GIL; tracing and lowering take turns)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(lambda f=f, a=a: f.lower(*a).compile()) for f, a in jobs]
        return [f.result() for f in futures]


class SplitStep:
    """`step(state, batch) -> (state, {**gradient metrics, **update metrics})` as two
    executables; `state` is donated to the update, as the single-program step donates it."""

    def __init__(self, gradients: Callable, update: Callable, state_shardings: Any = None,
                 batch_sharding: Any = None, metrics_sharding: Any = None,
                 params_of: Callable[[Any], Any] = lambda state: state.params):
        self._params_of = params_of
        if state_shardings is None:  # one device: the arguments' placement decides
            self._gradients = jax.jit(gradients)
            self._update = jax.jit(update, donate_argnums=(0,))
        else:
            grads_sh = params_of(state_shardings)
            gradients = on_mesh(batch_sharding.mesh, gradients,
                                batch_axes_of(batch_sharding))
            self._gradients = jax.jit(gradients, in_shardings=(state_shardings, batch_sharding),
                                      out_shardings=(grads_sh, metrics_sharding))
            self._update = jax.jit(update, in_shardings=(state_shardings, grads_sh),
                                   out_shardings=(state_shardings, metrics_sharding),
                                   donate_argnums=(0,))
        self._compiled: tuple[Any, Any] | None = None

    def compile(self, state: Any, batch: Any) -> SplitStep:
        """Compiles both halves for the shapes (and shardings) of `state` and `batch` (arrays
        or `jax.ShapeDtypeStruct`s)."""
        grads = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                             self._params_of(state))
        self._compiled = tuple(compile_concurrently(
            [(self._gradients, (state, batch)), (self._update, (state, grads))]))
        return self

    @property
    def executables(self) -> tuple[Any, Any]:
        """The compiled (gradients, update) programs (after the first call or `compile`)."""
        if self._compiled is None:
            raise RuntimeError("SplitStep: not compiled yet (call it or its compile method)")
        return self._compiled

    def __call__(self, state: Any, batch: Any) -> tuple[Any, dict]:
        if self._compiled is None:
            self.compile(state, batch)
        return compose(*self._compiled, state, batch)


def jit_step(step: Callable, shardings: StepShardings | None = None) -> Callable:
    """`step(state, batch) -> (state, metrics)` jitted with the state donated, and placed by
    `shardings` when given (else the arguments' placement decides)."""
    if shardings is None:
        return jax.jit(step, donate_argnums=(0,))
    return jax.jit(on_mesh(shardings.batch.mesh, step, batch_axes_of(shardings.batch)),
                   in_shardings=(shardings.state, shardings.batch),
                   out_shardings=(shardings.state, shardings.metrics), donate_argnums=(0,))


def train_step(gradients: Callable, update: Callable, *, split: bool,
               shardings: StepShardings | None = None) -> Callable:
    """The step `compose(gradients, update)`: a `SplitStep` if `split`, else one jitted
    program (`jit_step`). Either donates the state."""
    if split:
        return SplitStep(gradients, update, *(shardings or (None, None, None)))
    return jit_step(functools.partial(compose, gradients, update), shardings)
