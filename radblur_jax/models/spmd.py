"""Ops run per device on a batch split over devices, which XLA's SPMD partitioner would gather.

The models carry no sharding annotations: a jitted step gets its shardings from its arguments
and XLA propagates them. XLA splits nearly every op over a sharded batch, but not an FFT: its
partitioner gathers the whole batch onto every device and transforms all of it there, so each
device holds the full batch's activation and computes every example's spectrum. Nor a loop over
the batch: the CPU's blocked attention maps over batch x heads, and each step's slice of that
axis was gathered or exchanged between devices. `batchwise(f)` runs `f` on each device's part
of the leading (batch) axis instead, as a `shard_map` over the ambient mesh; `on_mesh(mesh,
fn, batch_axes)` makes `mesh` ambient while `fn` traces, with the axes the batch is split over
(default: all of them; a batch split over some axes and replicated over the others is run so,
not resharded around each op). The train step, the eval step and `Restorer` are jitted that
way.

    y = batchwise(jnp.fft.rfft2)(x)        # x (B, ...): B split over the batch axes
    step = jax.jit(on_mesh(mesh, step, ("data", "fsdp")), in_shardings=..., out_shardings=...)

Without an ambient mesh, on one device, or when the devices do not divide the batch,
`batchwise(f)(x)` is `f(x)`: the same program as before, so results on one device do not
change. `f` must treat each example on its own (an FFT over the trailing axes does, and
attention over each example's tokens).
"""
from __future__ import annotations

import contextvars
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
from jax.sharding import NamedSharding, PartitionSpec

F = TypeVar("F", bound=Callable[..., Any])

# The mesh axes the batch is split over while a function traces `on_mesh` (None: all of them).
_BATCH_AXES: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "batch_axes", default=None)


def batchwise(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """`f(*xs)`, per device on the leading axis of every `x` (and of the result) split over the
    batch axes of the ambient mesh (`on_mesh`), replicated over its other axes."""

    def per_device(*xs: jax.Array) -> jax.Array:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return f(*xs)
        axes = _BATCH_AXES.get()
        axes = tuple(mesh.axis_names) if axes is None else axes
        parts = math.prod(mesh.shape[a] for a in axes)
        if parts == 1 or any(x.ndim == 0 or x.shape[0] % parts for x in xs):
            return f(*xs)
        spec = PartitionSpec(axes)
        return jax.shard_map(f, mesh=mesh, in_specs=(spec,) * len(xs), out_specs=spec,
                             check_vma=False)(*xs)

    return per_device


def batch_axes_of(batch_sharding: NamedSharding) -> tuple[str, ...]:
    """The mesh axes a batch sharding splits the leading axis over (() when replicated)."""
    spec = tuple(batch_sharding.spec)
    first = spec[0] if spec else None
    if first is None:
        return ()
    return (first,) if isinstance(first, str) else tuple(first)


def on_mesh(mesh: jax.sharding.Mesh, fn: F, batch_axes: Sequence[str] | None = None) -> F:
    """`fn` traced with `mesh` as the ambient mesh and its batch split over `batch_axes`
    (default: every axis of `mesh`), so that its `batchwise` ops run per device (whichever
    thread traces it: `split_step` lowers its two programs in worker threads)."""
    axes = None if batch_axes is None else tuple(batch_axes)
    unknown = [a for a in axes or () if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"batch axes {unknown} are not axes of the mesh {mesh.axis_names}")

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        token = _BATCH_AXES.set(axes)
        try:
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                return fn(*args, **kwargs)
        finally:
            _BATCH_AXES.reset(token)

    return traced  # type: ignore[return-value]
