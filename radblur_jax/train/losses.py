"""Stage-B losses: deblurring (pixel + FFT, deep supervision over K outputs) and the exit head.

Pure functions of arrays; images are `(B, H, W, 3)` in [0, 1]; every loss computes in float32
(inputs of another dtype are cast). The exit classes' PSNR edges come from `models.configs`.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from radblur_jax.eval.metrics import psnr
from radblur_jax.models.configs import EXIT_PSNR_EDGES, PIXEL_LOSSES, check_choice
from radblur_jax.models.spmd import batchwise

PSNR_EDGES = EXIT_PSNR_EDGES



def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def fft_l1(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean |.| of the real and imaginary parts of `rfft2(pred - target)` over H, W."""
    spec = batchwise(lambda d: jnp.fft.rfft2(d, axes=(-3, -2)))(_f32(pred) - _f32(target))
    return 0.5 * (jnp.mean(jnp.abs(spec.real)) + jnp.mean(jnp.abs(spec.imag)))


def psnr_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """NAFNet's PSNR loss: mean over images of `10 log10(MSE + 1e-8)` (lower is better)."""
    pred, target = _f32(pred), _f32(target)
    mse = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, pred.ndim)))
    return jnp.mean(10.0 * jnp.log10(mse + 1e-8))


def deblur_loss(restored: jax.Array, sharp: jax.Array, *, pixel: str = "l1",
                fft_weight: float = 0.01) -> jax.Array:
    """Deep-supervision loss averaged over the K outputs.

    restored `(K, B, H, W, 3)`, sharp `(B, H, W, 3)`; per output `pixel(r, s) + fft_weight *
    fft_l1(r, s)` with `pixel` "l1" (mean absolute error) or "psnr" (`psnr_loss`).
    """
    check_choice("pixel loss", pixel, PIXEL_LOSSES)
    restored, sharp = _f32(restored), _f32(sharp)

    def one(r: jax.Array) -> jax.Array:
        term = jnp.mean(jnp.abs(r - sharp)) if pixel == "l1" else psnr_loss(r, sharp)
        return term + fft_weight * fft_l1(r, sharp)

    return jnp.mean(jax.vmap(one)(restored))


def exit_labels(blurry: jax.Array, sharp: jax.Array,
                edges: Sequence[float] = PSNR_EDGES) -> jax.Array:
    """Blur-degree class per image/patch `(B,)` int32 from the PSNR of blurry vs sharp.

    Class j means `edges[j-1] <= PSNR < edges[j]`: 0 is below 20 dB (most blurred),
    `len(edges)` is at or above 40 dB.
    """
    return jnp.searchsorted(jnp.asarray(edges), psnr(blurry, sharp), side="right").astype(
        jnp.int32)


def exit_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of exit logits `(B, classes)` against int labels `(B,)`."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_f32(logits), labels))
