"""Rematerialisation whose recomputation waits for the cotangent.

`nn.remat` (`jax.checkpoint`) keeps a module's inputs and recomputes its activations in the
backward pass, but the recomputation reads only the saved inputs, so nothing makes it wait
for the backward. In RADBlur's train step it saved nothing: XLA:CPU removes
`jax.checkpoint`'s optimisation barriers before its common-subexpression passes, which merge
the recomputation back into the forward; with those passes off, the compiler scheduled the
recomputation right after the forward. Either way the activations were live during the
reversible decoder's backward loop, the step's memory peak (docs/benchmarks.md,
`peak_memory.py`).

`deferred_remat(module, *args)` computes `module(*args)` and keeps only its params and args.
The backward pass recomputes the module from its args and params multiplied by `1 + 0 * g`,
`g` the output's cotangent (elementwise where it has the arg's shape, else its sum): exactly
the saved values while the cotangent is finite, but a data dependence no compiler pass
removes, so the recomputation can start only once the cotangent exists, and it is not the
forward's expression, so no pass merges the two. The params need it as much as the args:
XLA:CPU materialises a bias or a LayerNorm scale broadcast to the activation's shape for its
fused kernels, and a broadcast shared by the forward and the recomputation stayed live from
one to the other (three activation-sized buffers per NAF block). The gradients are those of
`jax.vjp` of the module at the same point (`x * 1.0 == x`); XLA may fuse the recomputation
differently from the forward, so they can differ from plain autodiff's in float32 rounding.
A non-finite cotangent makes the recomputation non-finite, as its gradients would be anyway.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _after(x: jax.Array, cotangent: Any) -> jax.Array:
    """`x`, computed from `cotangent`: `x * (1 + 0 * g)` with a cotangent leaf `g` of `x`'s
    shape (a residual block's; elementwise, so a sharded `x` needs no communication), else
    with the cotangent's sum."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    leaves = jax.tree_util.tree_leaves(cotangent)
    g = next((t for t in leaves if t.shape == x.shape), None)
    if g is None:
        g = sum(jnp.sum(t, dtype=jnp.float32) for t in leaves)
    return x * (1 + 0 * g).astype(x.dtype)


def deferred_remat(module: nn.Module, *args: jax.Array) -> Any:
    """`module(*args)` for a module with `params` only and array args, its activations
    recomputed in the backward pass once the output's cotangent is known instead of stored."""
    definition = module.clone(parent=None)

    def apply(params, *xs):
        return definition.apply({"params": params}, *xs)

    def forward(mdl, *xs):
        return mdl(*xs), (mdl.variables["params"], xs)

    def backward(residuals, g):
        params, xs = residuals
        xs = tuple(_after(x, g) for x in xs)
        params = jax.tree_util.tree_map(lambda p: _after(p, g), params)
        _, vjp = jax.vjp(apply, params, *xs)
        params_t, *xs_t = vjp(g)
        return ({"params": params_t}, *xs_t)

    return nn.custom_vjp(lambda mdl, *xs: mdl(*xs), forward_fn=forward,
                         backward_fn=backward)(module, *args)
