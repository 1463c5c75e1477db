"""LayerNorm over channels (NHWC), with a backward that XLA:CPU runs in few passes.

`layer_norm(x, scale, bias, eps, impl)` computes what `flax.linen.LayerNorm` computes (mean and
the clipped one-pass variance `max(E[x^2] - E[x]^2, 0)` over the last axis, in float32):

    y = (x - mean) * rsqrt(var + eps) * scale + bias

With `impl="fast"` it has a custom VJP. Autodiff of the forward reduces over the channels
four times and broadcasts the statistics back; on the CPU XLA fuses those producers into
several consumers and recomputes them. The custom backward is the closed form

    g_x = rstd * (g s - mean(g s) - xhat * mean(g s * xhat)),  xhat = (x - mean) * rstd,

from the saved `xhat` and `rstd` (materialised once behind `lax.optimization_barrier`), with
the parameter gradients reduced by `conv_ops.sum_rows`. `scale` goes behind the barrier too:
inside the decoder's scan it is a slice of the stacked params, and without the barrier XLA:CPU
broadcasts that slice to a full activation-sized buffer for the fused backward.
`impl="lax"` computes `nn.LayerNorm`'s forward with the same closed-form backward, recomputing
`xhat` from the saved input and statistics (no barrier around the activations, a CPU remedy),
so the backward reads two full-size tensors (x, g) instead of autodiff's saved intermediates;
only `scale` goes behind a barrier (see `_lean_bwd`).
`backends.FAST` / `backends.LAX` hand the network this module with `impl` bound.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from radblur_jax.models.conv_ops import check_impl, reduce_rows, sum_rows
from radblur_jax.models.params import param


def _statistics(x: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
    """Mean and `rsqrt(var + eps)` over the last axis, `(..., 1)` each (flax's fast variance)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
    return mean, lax.rsqrt(var + eps)


def _reference(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    mean, rstd = _statistics(x, eps)
    return (x - mean) * (rstd * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fast(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    return _reference(x, scale, bias, eps)


def _fast_fwd(x, scale, bias, eps):
    mean, rstd = _statistics(x, eps)
    centred = x - mean
    # The output as the primal computes it (inverting a reversible step recomputes the
    # forward under `jax.vjp`; it must round exactly as the forward pass did).
    return centred * (rstd * scale) + bias, (centred * rstd, rstd, scale)


def _fast_bwd(eps, residuals, g):
    del eps
    xhat, rstd, scale = residuals
    xhat, rstd, g, scale = lax.optimization_barrier((xhat, rstd, g, scale))
    gs = g * scale
    gx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
                 - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
    return gx, sum_rows(g * xhat), sum_rows(g)


_fast.defvjp(_fast_fwd, _fast_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _lean(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    return _reference(x, scale, bias, eps)


def _lean_fwd(x, scale, bias, eps):
    mean, rstd = _statistics(x, eps)
    # Saves the input (live anyway: it is the block's residual) and two per-pixel statistics,
    # not the normalised activation: the backward recomputes `xhat` inside its fused pass.
    return (x - mean) * (rstd * scale) + bias, (x, mean, rstd, scale)


def _lean_bwd(eps, residuals, g):
    del eps
    x, mean, rstd, scale = residuals
    # XLA:CPU materialises `scale` broadcast to the activation's shape for its fused kernels,
    # and kept the forward's buffer live until the backward used it; with the backward's
    # `scale` behind a barrier it broadcasts its own (a no-op for compilers that fuse
    # broadcasts into their consumers).
    scale = lax.optimization_barrier(scale)
    xhat = (x - mean) * rstd
    gs = g * scale
    gx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
                 - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
    return gx, reduce_rows(g * xhat), reduce_rows(g)


_lean.defvjp(_lean_fwd, _lean_bwd)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = 1e-6,
               impl: str = "fast") -> jax.Array:
    """LayerNorm of `x (..., C)` over C with `scale`, `bias (C,)`; float32 in and out."""
    if check_impl(impl) == "fast":
        return _fast(x, scale, bias, float(eps))
    return _lean(x, scale, bias, float(eps))


class LayerNorm(nn.Module):
    """`nn.LayerNorm(epsilon, dtype=float32)` over channels, params `scale`, `bias (C,)`
    float32; returns float32 whatever the input dtype. `impl` as in `layer_norm`."""
    epsilon: float = 1e-6
    impl: str = "fast"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = param(self, "scale", nn.initializers.ones, (c,))
        bias = param(self, "bias", nn.initializers.zeros, (c,))
        return layer_norm(x.astype(jnp.float32), scale, bias, self.epsilon, self.impl)
