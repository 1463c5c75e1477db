"""PyTorch-exact resampling and convolution helpers, NHWC.

Resizes are separable: the `(out, in)` interpolation matrix of each axis is built in numpy at
trace time (source coordinates and weights in float32, as ATen computes them for float32
tensors) and applied by `resample_axis`, as gathers of each output's few non-zero
taps summed in float32 (`MAX_TAPS`; a matmul over every input would spend its work on zeros
and, on a CPU, on transposes of the full-resolution result). They reproduce
`torch.nn.functional.interpolate` for:
  - `mode="bicubic", align_corners=False` with `size=` or `scale_factor=` (A = -0.75, clamped
    edge indices; with `scale_factor` the source scale is `1 / scale_factor`),
  - `mode="bicubic", antialias=True` (support widened by the scale when downsampling,
    A = -0.5, weights renormalised at the borders),
  - `mode="bilinear"` with `align_corners=True` or `False`.
`region_bilinear_matrix` resamples between grids of different pixel sizes anchored at the same
image origin (depth features onto the decoder levels); `reflect_pad_to` pads to a size.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------ interpolation matrices


F32 = np.float32


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel at distances `x` (any sign), in float32 as ATen
    evaluates it (`cubic_convolution1` / `cubic_convolution2`)."""
    x, a = np.abs(np.asarray(x, F32)), F32(a)
    near = ((a + F32(2)) * x - (a + F32(3))) * x * x + F32(1)
    far = ((a * x - F32(5) * a) * x + F32(8) * a) * x - F32(4) * a
    return np.where(x < F32(1), near, np.where(x < F32(2), far, F32(0)))


def _source_scale(in_size: int, out_size: int, scale: float | None) -> np.float32:
    """ATen's `area_pixel_compute_scale` (align_corners=False) in float32: `1 / scale_factor`
    (given here as `scale`, computed in float64 as torch does) or `in / out`."""
    return F32(scale) if scale is not None else F32(in_size) / F32(out_size)


def _fma_source(s: np.float32, out_size: int) -> np.ndarray:
    """`s * (i + 0.5) - 0.5` for output pixels `i`, rounded to float32 once: the x86 build of
    ATen computes it as one fused multiply-add (two roundings move some coordinates by an
    ulp, which shows as 1e-5 at a handful of pixels)."""
    half = np.arange(out_size, dtype=F32) + F32(0.5)
    return (np.float64(s) * half.astype(np.float64) - 0.5).astype(F32)


def bicubic_matrix(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
    """(out, in) matrix of torch's non-antialiased bicubic, align_corners=False.

    `scale` is the source step per output pixel: `in/out` for `size=`, `1/scale_factor` for
    `scale_factor=`. Coordinates and weights are computed in float32, as ATen computes them
    for float32 tensors: in float64 they differ in the last bits, which a large upsampling
    (37 -> 518 px) turns into a 1e-5 relative difference of the output.
    """
    s = _source_scale(in_size, out_size, scale)
    src = _fma_source(s, out_size)
    base = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    t = np.clip(src - base.astype(F32), F32(0), F32(1))
    coeffs = (_cubic(t + F32(1), -0.75), _cubic(t, -0.75), _cubic(F32(1) - t, -0.75),
              _cubic((F32(1) - t) + F32(1), -0.75))
    mat = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for k, w in zip(range(-1, 3), coeffs):
        idx = np.clip(base + k, 0, in_size - 1)
        np.add.at(mat, (rows, idx), w.astype(np.float64))
    return mat


def bicubic_aa_matrix(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
    """(out, in) matrix of torch's antialiased bicubic (`antialias=True`), float32 weights as
    ATen's `_compute_weights_aa`."""
    s = _source_scale(in_size, out_size, scale)
    support = F32(2) * s if s >= 1.0 else F32(2)
    inv = F32(1) / s if s >= 1.0 else F32(1)
    mat = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = F32(s * (i + 0.5))
        lo = max(int(float(center) - float(support) + 0.5), 0)
        hi = min(int(float(center) + float(support) + 0.5), in_size)
        j = np.arange(lo, hi)
        w = _cubic(((j - center).astype(np.float64) + 0.5) * float(inv), -0.5)
        total = np.sum(w, dtype=F32) if len(w) else F32(0)
        mat[i, lo:hi] = (w / total if total != 0.0 else w).astype(np.float64)
    return mat


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = True) -> np.ndarray:
    """(out, in) matrix of torch's bilinear interpolation (`size=` given); coordinates and
    weights in float32 (as `bicubic_matrix`)."""
    if align_corners:
        s = F32(in_size - 1) / F32(out_size - 1) if out_size > 1 else F32(0)
        src = s * np.arange(out_size, dtype=F32)
    else:
        s = _source_scale(in_size, out_size, None)
        src = np.maximum(_fma_source(s, out_size), F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(F32), F32(0), F32(1))
    mat = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(mat, (rows, i0), (F32(1) - lam).astype(np.float64))
    np.add.at(mat, (rows, i1), lam.astype(np.float64))
    return mat


def region_bilinear_matrix(in_size: int, out_size: int, in_pixel: float,
                           out_pixel: float) -> np.ndarray:
    """(out, in) bilinear matrix between grids anchored at the same image origin.

    Input pixels are `in_pixel` image pixels wide, output pixels `out_pixel`; output pixel j's
    centre `(j + 0.5) * out_pixel` is sampled at input coordinate `centre / in_pixel - 0.5`
    (clamped to the input's edge pixels).
    """
    src = np.clip((np.arange(out_size) + 0.5) * out_pixel / in_pixel - 0.5, 0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    mat = np.zeros((out_size, in_size))
    np.add.at(mat, (np.arange(out_size), i0), 1.0 - lam)
    np.add.at(mat, (np.arange(out_size), i1), lam)
    return mat


# A matrix with at most this many non-zeros per row is applied as that many gathers and
# multiply-adds; a denser one as a matmul. Bilinear and bicubic upsampling have 2 and 4.
MAX_TAPS = 8


def interpolation_taps(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(index (out, T) int32, weight (out, T))` of the non-zeros of each row of an `(out, in)`
    matrix, `T` the most in any row; shorter rows are padded with weight 0."""
    nonzero = mat != 0
    taps = max(1, int(nonzero.sum(axis=1).max()))
    index = np.zeros((mat.shape[0], taps), np.int32)
    weight = np.zeros((mat.shape[0], taps), mat.dtype)
    for row in range(mat.shape[0]):
        cols = np.flatnonzero(nonzero[row])
        index[row, :len(cols)] = cols
        weight[row, :len(cols)] = mat[row, cols]
    return index, weight


def resample_axis(x: jax.Array, mat: np.ndarray, axis: int) -> jax.Array:
    """Applies an `(out, in)` matrix along `axis` of `x`: `y[.., o, ..] = sum_i mat[o, i] x[.., i,
    ..]`. A sparse matrix (interpolation) is applied as gathers of its non-zero taps, summed in
    float32 (the same products and sums as the matmul, none of its multiplications by zero);
    a dense one as a float32-precision matmul."""
    index, weight = interpolation_taps(mat)
    if index.shape[1] > MAX_TAPS:
        y = jnp.tensordot(jnp.asarray(mat, x.dtype), x, axes=((1,), (axis,)),
                          precision=jax.lax.Precision.HIGHEST)
        return jnp.moveaxis(y, 0, axis)
    shape = [1] * x.ndim
    shape[axis] = mat.shape[0]
    x32 = x.astype(jnp.float32)
    y = None
    for t in range(index.shape[1]):
        term = (jnp.take(x32, jnp.asarray(index[:, t]), axis=axis)
                * jnp.asarray(weight[:, t], jnp.float32).reshape(shape))
        y = term if y is None else y + term
    return y.astype(x.dtype)


def apply_separable(x: jax.Array, mat_h: np.ndarray, mat_w: np.ndarray) -> jax.Array:
    """Applies `(oh, H)` and `(ow, W)` matrices to `x (B, H, W, C)` -> `(B, oh, ow, C)`: along
    W, then along H (`resample_axis`). The gradient applies the transposed matrices the same
    way (gathers, not the scatter-adds autodiff would make of the forward's gathers)."""
    @jax.custom_vjp
    def resize(x):
        return resample_axis(resample_axis(x, mat_w, 2), mat_h, 1)

    def resize_fwd(x):
        return resize(x), None

    def resize_bwd(_, g):
        return (resample_axis(resample_axis(g, mat_h.T, 1), mat_w.T, 2).astype(x.dtype),)

    resize.defvjp(resize_fwd, resize_bwd)
    return resize(x)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def bicubic_resize(x: jax.Array, size: Sequence[int] | None = None,
                   scale_factor: float | Sequence[float] | None = None,
                   antialias: bool = False) -> jax.Array:
    """torch `F.interpolate(mode="bicubic", align_corners=False)` on `x (B, H, W, C)`.

    Exactly one of `size=(oh, ow)` or `scale_factor` (scalar or `(sh, sw)`; output side
    `floor(in * s)`, source coordinates mapped with `1 / s` as torch does).
    """
    if (size is None) == (scale_factor is None):
        raise ValueError("pass exactly one of size or scale_factor")
    _, h, w, _ = x.shape
    if size is not None:
        (oh, ow), (sh, sw) = _pair(size), (None, None)
    else:
        fh, fw = _pair(scale_factor)
        oh, ow = int(math.floor(h * fh)), int(math.floor(w * fw))
        sh, sw = 1.0 / fh, 1.0 / fw
    make = bicubic_aa_matrix if antialias else bicubic_matrix
    return apply_separable(x, make(h, oh, sh), make(w, ow, sw))


def bilinear_resize(x: jax.Array, size: Sequence[int], align_corners: bool = True) -> jax.Array:
    """torch `F.interpolate(mode="bilinear", size=size)` on `x (B, H, W, C)`."""
    _, h, w, _ = x.shape
    oh, ow = _pair(size)
    return apply_separable(x, bilinear_matrix(h, oh, align_corners),
                           bilinear_matrix(w, ow, align_corners))


# ------------------------------------------------------------------ padding


def ceil_to(x: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= x."""
    return -(-int(x) // multiple) * multiple


def reflect_pad_to(x: jax.Array, height: int, width: int) -> jax.Array:
    """Reflect-pads `(B, h, w, C)` at the bottom/right to `(B, height, width, C)`."""
    _, h, w, _ = x.shape
    return jnp.pad(x, ((0, 0), (0, height - h), (0, width - w), (0, 0)), mode="reflect")


# ------------------------------------------------------------------ convolutions


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *, use_bias: bool = True,
         dtype=jnp.float32, name: str | None = None) -> nn.Conv:
    """`nn.Conv` with torch-style explicit symmetric padding (never "SAME")."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                   dtype=dtype, param_dtype=jnp.float32, name=name)


class ConvTranspose(nn.Module):
    """torch `nn.ConvTranspose2d` (no output_padding, no groups), NHWC.

    Params: `kernel (kh, kw, I, O)` = torch weight `[I, O, kh, kw].transpose(2, 3, 0, 1)`,
    `bias (O,)`. Output side `(in - 1) * stride - 2 * padding + k`.
    """
    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, x.shape[-1], self.features), jnp.float32)
        x = x.astype(self.dtype)
        kern = jnp.flip(kernel, (0, 1)).astype(self.dtype)
        pad = k - 1 - self.padding
        y = jax.lax.conv_general_dilated(
            x, kern, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
            lhs_dilation=(self.stride, self.stride),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
