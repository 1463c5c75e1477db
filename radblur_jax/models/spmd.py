"""Ops run per device on a batch split over devices, which XLA's SPMD partitioner would gather.

The models carry no sharding annotations: a jitted step gets its shardings from its arguments
and XLA propagates them. XLA splits nearly every op over a sharded batch, but not an FFT: its
partitioner gathers the whole batch onto every device and transforms all of it there, so each
device holds the full batch's activation and computes every example's spectrum. Nor a loop over
the batch: the CPU's blocked attention maps over batch x heads, and each step's slice of that
axis was gathered or exchanged between devices. `batchwise(f)` runs `f` on each device's part
of the leading (batch) axis instead, as a `shard_map` over the ambient mesh; `on_mesh(mesh,
fn)` makes `mesh` ambient while `fn` traces (the train step, the eval step and `Restorer` are
jitted that way).

    y = batchwise(jnp.fft.rfft2)(x)        # x (B, ...): B split over every mesh axis
    step = jax.jit(on_mesh(mesh, step), in_shardings=..., out_shardings=...)

Without an ambient mesh, on one device, or when the devices do not divide the batch,
`batchwise(f)(x)` is `f(x)`: the same program as before, so results on one device do not
change. `f` must treat each example on its own (an FFT over the trailing axes does, and
attention over each example's tokens).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax.sharding import PartitionSpec

F = TypeVar("F", bound=Callable[..., Any])


def batchwise(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """`f(*xs)`, per device on the leading axis of every `x` (and of the result) split over all
    axes of the ambient mesh."""

    def per_device(*xs: jax.Array) -> jax.Array:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1 or any(x.ndim == 0 or x.shape[0] % mesh.size
                                               for x in xs):
            return f(*xs)
        spec = PartitionSpec(tuple(mesh.axis_names))
        return jax.shard_map(f, mesh=mesh, in_specs=(spec,) * len(xs), out_specs=spec,
                             check_vma=False)(*xs)

    return per_device


def on_mesh(mesh: jax.sharding.Mesh, fn: F) -> F:
    """`fn` traced with `mesh` as the ambient mesh, so that its `batchwise` ops run per device
    (whichever thread traces it: `split_step` lowers its two programs in worker threads)."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced  # type: ignore[return-value]
