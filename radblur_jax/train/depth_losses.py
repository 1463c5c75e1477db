"""Stage-A losses: scale-and-shift-invariant disparity loss + multi-scale gradient matching.

The MiDaS formulation (Ranftl et al. 2020), as Depth Anything trains with it:
- the ground-truth disparity is normalised per image (minus its valid mean, divided by its mean
  absolute deviation) so that every image weighs the same whatever its depth range;
- the prediction is aligned to it per image by least squares on the valid pixels (scale s, shift
  t in closed form, differentiable), and the SSI term is the mean absolute residual
  `|s * pred + t - gt|` over all valid pixels of the batch (MiDaS's "batch-based" reduction);
- the gradient-matching term is MiDaS's: at scales 1, 1/2, 1/4, 1/8 (stride 2**k) the sum of
  `|d/dx residual| + |d/dy residual|` where both pixels are valid, over the valid pixel count.

Shapes: pred `(B, H, W)`; targets and `valid` `(B, H, W)` or `(B, H, W, 1)` (the data pipeline's
depth). All math in float32 whatever the input dtype; images without valid pixels add nothing and
keep gradients finite.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _bhw(x: jax.Array, dtype=jnp.float32) -> jax.Array:
    """`(B, H, W)` or `(B, H, W, 1)` -> `(B, H, W)` of `dtype`."""
    x = jnp.asarray(x)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"expected (B, H, W) or (B, H, W, 1), got shape {x.shape}")
    return x.astype(dtype)


def _safe_div(num: jax.Array, den: jax.Array, ok: jax.Array) -> jax.Array:
    """`num / den` where `ok`, else 0, with finite gradients everywhere."""
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def depth_to_disparity(depth: jax.Array, valid: jax.Array) -> jax.Array:
    """`1 / depth` where `valid` and depth > 0, else 0; float32, same shape as `depth`."""
    depth = jnp.asarray(depth, jnp.float32)
    ok = jnp.asarray(valid, bool) & (depth > 0)
    return _safe_div(jnp.ones_like(depth), depth, ok)


def _fit(pred: jax.Array, target: jax.Array, m: jax.Array):
    """Least-squares fit on mean-centred values (well conditioned in float32).

    pred, target `(B, H, W)` float32, zero where invalid; m the float mask. Returns
    `(scale, shift, dp, dt)`: `(B,)` each, and the centred masked maps, so that the aligned
    residual `scale * pred + shift - target` equals `scale * dp - dt` on valid pixels.
    """
    axes = (1, 2)
    n = jnp.sum(m, axes)
    has = n > 0

    def centred(x):  # two-pass mean: the second pass removes the first sum's round-off
        mean = _safe_div(jnp.sum(x, axes), n, has)
        mean = mean + _safe_div(jnp.sum(m * (x - mean[:, None, None]), axes), n, has)
        return mean, m * (x - mean[:, None, None])

    (mean_p, dp), (mean_t, dt) = centred(pred), centred(target)
    var_p = jnp.sum(dp * dp, axes)
    # Relative guard: centred values of a constant pred are float32 round-off.
    ok = has & (var_p > 1e-10 * jnp.sum(pred * pred, axes))
    scale = _safe_div(jnp.sum(dp * dt, axes), var_p, ok)
    return scale, mean_t - scale * mean_p, dp, dt


def _inputs(pred: jax.Array, target: jax.Array, valid: jax.Array):
    """float32 `(B, H, W)` pred, target (0 where invalid, so NaN/Inf there is ignored), mask."""
    mb = _bhw(valid, bool)
    pred, target = jnp.where(mb, _bhw(pred), 0.0), jnp.where(mb, _bhw(target), 0.0)
    return pred, target, mb.astype(jnp.float32)


def align_scale_shift(pred: jax.Array, target: jax.Array, valid: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Per-image least squares `argmin_{s,t} sum_valid (s * pred + t - target)**2`.

    Returns `(scale, shift)`, each `(B,)` float32. No valid pixel: (0, 0); constant pred:
    (0, mean target).
    """
    scale, shift, _, _ = _fit(*_inputs(pred, target, valid))
    return scale, shift


def _normalise(target: jax.Array, m: jax.Array) -> jax.Array:
    """Per image: (target - valid mean) / valid mean absolute deviation; 0 where invalid."""
    axes = (1, 2)
    n = jnp.sum(m, axes)
    mean = _safe_div(jnp.sum(m * target, axes), n, n > 0)[:, None, None]
    mad = _safe_div(jnp.sum(m * jnp.abs(target - mean), axes), n, n > 0)[:, None, None]
    return m * _safe_div(target - mean, mad, mad > 0)


def _residual(pred: jax.Array, target: jax.Array, valid: jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """Aligned residual `s * pred + t - normalised target` (0 where invalid) and the float mask."""
    pred, target, m = _inputs(pred, target, valid)
    scale, _, dp, dt = _fit(pred, _normalise(target, m), m)
    r = scale[:, None, None] * dp - dt
    # The optimal residual has zero mean; removing the float32 sums' round-off from it
    # keeps an exactly affine pred at ~1e-7 instead of ~1e-6.
    n = jnp.sum(m, (1, 2))
    return m * (r - _safe_div(jnp.sum(r, (1, 2)), n, n > 0)[:, None, None]), m


def _ssi(r: jax.Array, m: jax.Array) -> jax.Array:
    n = jnp.sum(m)
    return _safe_div(jnp.sum(jnp.abs(r)), n, n > 0)


def _grad_match(r: jax.Array, m: jax.Array, scales: int) -> jax.Array:
    total = jnp.zeros((), jnp.float32)
    for k in range(scales):
        step = 2 ** k
        rs, ms = r[:, ::step, ::step], m[:, ::step, ::step]
        gx = jnp.abs(rs[:, :, 1:] - rs[:, :, :-1]) * ms[:, :, 1:] * ms[:, :, :-1]
        gy = jnp.abs(rs[:, 1:] - rs[:, :-1]) * ms[:, 1:] * ms[:, :-1]
        n = jnp.sum(ms)
        total = total + _safe_div(jnp.sum(gx) + jnp.sum(gy), n, n > 0)
    return total


def ssi_loss(pred_disparity: jax.Array, gt_disparity: jax.Array, valid: jax.Array
             ) -> jax.Array:
    """Scale-and-shift-invariant MAE (scalar float32): least-squares aligned, see module doc."""
    return _ssi(*_residual(pred_disparity, gt_disparity, valid))


def gradient_matching_loss(pred: jax.Array, target: jax.Array, valid: jax.Array,
                           scales: int = 4) -> jax.Array:
    """MiDaS multi-scale gradient matching on the aligned residual (scalar float32)."""
    return _grad_match(*_residual(pred, target, valid), scales)


def depth_loss(pred_disparity: jax.Array, gt_depth: jax.Array, valid: jax.Array, *,
               grad_weight: float = 0.5, scales: int = 4) -> jax.Array:
    """Stage-A loss: `ssi + grad_weight * gradient matching` against `1 / gt_depth`.

    pred_disparity `(B, H, W)` (the model's relative disparity); gt_depth and valid `(B, H, W)`
    or `(B, H, W, 1)`; pixels with depth <= 0 count as invalid.
    """
    valid = _bhw(valid, bool) & (_bhw(gt_depth) > 0)
    r, m = _residual(pred_disparity, depth_to_disparity(_bhw(gt_depth), valid), valid)
    return _ssi(r, m) + grad_weight * _grad_match(r, m, scales)
