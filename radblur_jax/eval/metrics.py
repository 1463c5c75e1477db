"""Image and depth metrics in jnp: PSNR, SSIM (3-D and per-channel Gaussian forms), depth errors.

All functions are jittable and return one value per image. Images are `(B, H, W, C)` float in
`[0, data_range]`; the GoPro/HIDE/REDS protocol first calls `quantize_uint8` so that scores match
evaluation on 8-bit PNGs (see docs/evaluation.md); `uint_levels` is its numpy form, which the
saved PNGs use.

SSIM constants follow Wang et al. (2004): K1 = 0.01, K2 = 0.03, Gaussian window of 11 taps per
axis with sigma 1.5 (`cv2.getGaussianKernel(11, 1.5)`, equal to scikit-image's truncate=3.5
window), population (not sample) covariance.

- `mode="3d"`: the form that the numbers in deblurring papers use (MATLAB `ssim` on an RGB
  volume; BasicSR/NAFNet `_ssim_3d`): one 11x11x11 Gaussian over height, width AND channel,
  replicate padding on all three axes, mean over the whole map.
- `mode="per_channel"`: scikit-image `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, channel_axis=-1)`: a 2-D window per channel, the 5-pixel border
  where the window leaves the image dropped, mean over the rest.

Local variances are combined axis by axis with the law of total variance instead of
`E[x^2] - E[x]^2`, so float32 has no cancellation (agreement with float64 references ~1e-7).
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_TAPS = 11
SSIM_SIGMA = 1.5
SSIM_RADIUS = SSIM_TAPS // 2

SsimMode = Literal["3d", "per_channel"]


@functools.cache
def gaussian_window(taps: int = SSIM_TAPS, sigma: float = SSIM_SIGMA) -> tuple[float, ...]:
    """Normalised 1-D Gaussian, as `cv2.getGaussianKernel(taps, sigma)` (float64 values)."""
    x = np.arange(taps, dtype=np.float64) - (taps - 1) / 2.0
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return tuple(float(v) for v in w / w.sum())


def quantize_uint8(images: jax.Array) -> jax.Array:
    """Clip to [0, 1] and round to the 256 uint8 levels, kept as float32 in [0, 1].

    `(B, H, W, C)` -> same shape. The arithmetic is `uint_levels`' (float32 multiply by 255,
    round half to even), so the scored levels are the ones a saved PNG holds.
    """
    return jnp.round(jnp.clip(images.astype(jnp.float32), 0.0, 1.0) * 255.0) / 255.0


def uint_levels(images: np.ndarray, bits: int = 8) -> np.ndarray:
    """numpy: clip to [0, 1], multiply by `2**bits - 1` and round half to even, in float32;
    returns uint8 (bits 8) or uint16 (bits 16), same shape.

    The one quantiser of saved and scored images: for 8 bits it is `quantize_uint8`'s
    arithmetic exactly. (Rounding `x * 255` in float64 instead puts some float32 values one
    level apart: those whose float32 product rounds to an exact half.)
    """
    if bits not in (8, 16):
        raise ValueError(f"uint_levels: bits must be 8 or 16, got {bits}")
    top = np.float32(255.0 if bits == 8 else 65535.0)
    levels = np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * top)
    return levels.astype(np.uint8 if bits == 8 else np.uint16)


def psnr(pred: jax.Array, target: jax.Array, *, data_range: float = 1.0) -> jax.Array:
    """Per-image PSNR in dB over all pixels and channels: `(B, H, W, C)` x2 -> `(B,)`.

    `inf` where the images are identical (as scikit-image's `peak_signal_noise_ratio`).
    """
    _check_pair(pred, target)
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
    return 10.0 * jnp.log10((data_range * data_range) / mse)


def _window_moments(stats: tuple[jax.Array, ...], axis: int,
                    taps: tuple[float, ...]) -> tuple[jax.Array, ...]:
    """Combines per-element window moments over a 1-D Gaussian window along `axis` ('valid').

    `stats` = (mean_x, mean_y, var_x, var_y, cov_xy) of the windows filtered so far; the
    result holds the same moments of the window extended along `axis` (the law of total
    variance: within-group moments plus the spread of the group means). Variances are sums of
    non-negative terms, so nothing cancels: flat regions give exactly 0 in float32.
    """
    mx, my, vxx, vyy, vxy = stats
    n = mx.shape[axis] - len(taps) + 1

    def sl(a: jax.Array, k: int) -> jax.Array:
        return jax.lax.slice_in_dim(a, k, k + n, axis=axis)

    wk = [jnp.float32(w) for w in taps]
    new_mx = sum(w * sl(mx, k) for k, w in enumerate(wk))
    new_my = sum(w * sl(my, k) for k, w in enumerate(wk))
    out_xx, out_yy, out_xy = 0.0, 0.0, 0.0
    for k, w in enumerate(wk):
        dx = sl(mx, k) - new_mx
        dy = sl(my, k) - new_my
        out_xx = out_xx + w * (sl(vxx, k) + dx * dx)
        out_yy = out_yy + w * (sl(vyy, k) + dy * dy)
        out_xy = out_xy + w * (sl(vxy, k) + dx * dy)
    return new_mx, new_my, out_xx, out_yy, out_xy


def ssim_map(pred: jax.Array, target: jax.Array, *, mode: SsimMode = "3d",
             data_range: float = 1.0, padding: str = "edge") -> jax.Array:
    """SSIM map `(B, H', W', C)` of two `(B, H, W, C)` image batches.

    mode "3d": Gaussian over H, W and C; mode "per_channel": over H and W only. `padding`
    is a `jnp.pad` mode applied on the filtered axes ("edge" = replicate, "symmetric" =
    scipy.ndimage's "reflect"), or "valid" for no padding (the map then shrinks by 10 per
    filtered axis).
    """
    _check_pair(pred, target)
    if mode not in ("3d", "per_channel"):
        raise ValueError(f"unknown SSIM mode {mode!r}; expected '3d' or 'per_channel'")
    axes = (1, 2, 3) if mode == "3d" else (1, 2)
    if padding == "valid":
        for a in axes:
            if pred.shape[a] < SSIM_TAPS:
                raise ValueError(f"SSIM needs every filtered side >= {SSIM_TAPS}; got image "
                                 f"shape {tuple(pred.shape[1:])}")
    x = pred.astype(jnp.float32)
    y = target.astype(jnp.float32)
    zero = jnp.zeros_like(x)
    stats = (x, y, zero, zero, zero)
    taps = gaussian_window()
    for a in axes:
        if padding != "valid":
            pad = [(0, 0)] * x.ndim
            pad[a] = (SSIM_RADIUS, SSIM_RADIUS)
            stats = tuple(jnp.pad(s, pad, mode=padding) for s in stats)
        stats = _window_moments(stats, a, taps)
    mu_x, mu_y, var_x, var_y, cov = stats
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def ssim(pred: jax.Array, target: jax.Array, *, mode: SsimMode = "3d",
         data_range: float = 1.0) -> jax.Array:
    """Per-image mean SSIM `(B,)` of `(B, H, W, C)` batches (see the module docstring for modes).

    "3d" pads by replication and averages the full map; "per_channel" averages the map where
    the window lies inside the image (H, W >= 11 required).
    """
    padding = "edge" if mode == "3d" else "valid"
    smap = ssim_map(pred, target, mode=mode, data_range=data_range, padding=padding)
    return jnp.mean(smap, axis=(1, 2, 3))


def depth_metrics(pred_disparity: jax.Array, gt_depth: jax.Array, valid: jax.Array,
                  *, depth_cap: float | None = None) -> dict[str, jax.Array]:
    """AbsRel and delta1 `(B,)` after aligning predicted disparity to GT disparity.

    pred_disparity, gt_depth, valid: `(B, H, W)` (or `(B, H, W, 1)`); `valid` bool/0-1 marks
    pixels with ground truth (`gt_depth > 0` is also required). Per image, scale s and shift t
    minimise `sum_valid (s * pred + t - 1 / gt_depth)^2` (least squares); the aligned disparity
    is clamped below at `1 / depth_cap` (default: the image's largest valid GT depth) and
    inverted to depth. AbsRel = mean |d - gt| / gt; delta1 = fraction with max(d/gt, gt/d) <
    1.25; both over valid pixels. A prediction constant over the valid pixels gets s = 0 (the
    aligned map is the mean GT disparity), so a dead depth head scores what the best constant
    scores instead of NaN. Images without valid pixels give NaN.
    """
    p = _squeeze_depth(pred_disparity).astype(jnp.float32)
    g = _squeeze_depth(gt_depth).astype(jnp.float32)
    m = _squeeze_depth(valid).astype(bool) & (g > 0)
    if p.shape != g.shape or p.shape != m.shape:
        raise ValueError(f"depth_metrics: shapes differ: pred {pred_disparity.shape}, "
                         f"gt {gt_depth.shape}, valid {valid.shape}")
    axes = (1, 2)
    w = m.astype(jnp.float32)
    n = jnp.sum(w, axis=axes, keepdims=True)
    g_disp = jnp.where(m, 1.0 / jnp.where(m, g, 1.0), 0.0)
    # Centred normal equations: t decouples from s, which keeps float32 accurate.
    p_mean = jnp.sum(w * p, axis=axes, keepdims=True) / n
    g_mean = jnp.sum(g_disp, axis=axes, keepdims=True) / n
    pc = (p - p_mean) * w
    var_p = jnp.sum(pc * pc, axis=axes, keepdims=True)
    # A constant prediction has no scale to fit: s = 0 (aligned = mean GT disparity, the best
    # constant) instead of 0/0. The guard is relative, as in train/depth_losses.py `_fit`:
    # the centred values of a constant map are float32 round-off, not exact zeros.
    fit = var_p > 1e-10 * jnp.sum(w * p * p, axis=axes, keepdims=True)
    cov = jnp.sum(pc * (g_disp - g_mean), axis=axes, keepdims=True)
    s = jnp.where(fit, cov / jnp.where(fit, var_p, 1.0), 0.0)
    t = g_mean - s * p_mean
    aligned = s * p + t
    if depth_cap is None:
        cap = jnp.max(jnp.where(m, g, 0.0), axis=axes, keepdims=True)
    else:
        cap = jnp.full_like(n, depth_cap)
    aligned = jnp.maximum(aligned, 1.0 / cap)
    depth = 1.0 / aligned
    gs = jnp.where(m, g, 1.0)
    abs_rel = jnp.sum(jnp.where(m, jnp.abs(depth - gs) / gs, 0.0), axis=axes) / n[:, 0, 0]
    ratio = jnp.maximum(depth / gs, gs / depth)
    delta1 = jnp.sum(jnp.where(m & (ratio < 1.25), 1.0, 0.0), axis=axes) / n[:, 0, 0]
    return {"abs_rel": abs_rel, "delta1": delta1}


def _squeeze_depth(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise ValueError(f"depth maps must be (B, H, W) or (B, H, W, 1); got {x.shape}")
    return x


def _check_pair(pred: jax.Array, target: jax.Array) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target shapes differ: {pred.shape} vs {target.shape}")
    if pred.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C); got shape {pred.shape}")
