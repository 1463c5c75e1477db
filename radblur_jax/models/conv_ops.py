"""Convolutions in the forms XLA's CPU backend compiles well, NHWC / HWIO.

XLA:CPU lowers `lax.conv_general_dilated` and especially its gradients slowly (a grouped
depthwise conv's backward is tens of times slower than the same sum written as shifted
multiply-adds). `conv2d(..., impl="fast")` computes the same function as
`lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=groups)` as:

- 1x1, stride 1: one 2-D matmul `(B*H*W, I) @ (I, O)`;
- kernel == stride, no padding (2x2/2 downsampling, ViT patch embedding): space-to-depth
  (patchify) + one 2-D matmul;
- other full convs (3x3, 3x3 stride 2): im2col (the kh*kw shifted/strided slices
  concatenated on channels) + one 2-D matmul;
- depthwise (groups == I): kh*kw shifted multiply-adds, with a custom VJP whose kernel
  gradient is one fused multiply-reduce.

Gradients of the matmul forms are 2-D matmuls by construction. `impl="auto"` picks "fast" on
the CPU and "lax" (cuDNN/TPU convolutions) elsewhere. `Conv` and `ConvTranspose` are Linen
modules with the parameter names and shapes of `nn.Conv` / `layers.ConvTranspose`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from radblur_jax.models.configs import CONV_IMPLS
_DN = ("NHWC", "HWIO", "NHWC")
PaddingLike = Union[str, int, Sequence[Union[int, tuple[int, int]]]]


def resolve_impl(impl: str) -> str:
    """"fast" or "lax" for `impl` in CONV_IMPLS ("auto": fast on the CPU backend only)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS}")
    if impl == "auto":
        return "fast" if jax.default_backend() == "cpu" else "lax"
    return impl


def _pairs(padding: PaddingLike, in_hw: Sequence[int], kernel_hw: Sequence[int],
           strides: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit `((top, bottom), (left, right))` padding, as `nn.Conv` interprets `padding`."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"conv padding {padding!r}: expected SAME, VALID, ints or pairs")
        return tuple(lax.padtype_to_pads(in_hw, kernel_hw, strides, padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    if len(pads) != 2:
        raise ValueError(f"conv padding {padding!r}: expected 2 spatial entries")
    return pads


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """`(..., I) @ (I, O) -> (..., O)` as one 2-D matmul."""
    lead = x.shape[:-1]
    return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(lead + (w.shape[-1],))


def space_to_depth(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """`(B, H, W, C) -> (B, H/kh, W/kw, kh*kw*C)`, patch entries in (i, j, c) order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // kh, kh, w // kw, kw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // kh, w // kw, kh * kw * c)


def depth_to_space(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """Inverse of `space_to_depth`: `(B, h, w, kh*kw*C) -> (B, h*kh, w*kw, C)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, kh, kw, c // (kh * kw)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * kh, w * kw, c // (kh * kw))


def _shifted(xp: jax.Array, i: int, j: int, out_hw: tuple[int, int],
             strides: tuple[int, int]) -> jax.Array:
    """The slice of the padded input that kernel tap (i, j) sees: `(B, Ho, Wo, C)`."""
    (ho, wo), (sh, sw) = out_hw, strides
    return lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * sh + 1,
                                        j + (wo - 1) * sw + 1, xp.shape[3]), (1, sh, sw, 1))


def _out_hw(padded_hw: Sequence[int], kernel_hw: Sequence[int],
            strides: Sequence[int]) -> tuple[int, int]:
    return tuple((p - k) // s + 1 for p, k, s in zip(padded_hw, kernel_hw, strides))


def im2col(xp: jax.Array, kernel_hw: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    """Patches of an already padded `(B, H, W, C)` -> `(B, Ho, Wo, kh*kw*C)`, (i, j, c) order."""
    kh, kw = kernel_hw
    out_hw = _out_hw(xp.shape[1:3], kernel_hw, strides)
    taps = [_shifted(xp, i, j, out_hw, strides) for i in range(kh) for j in range(kw)]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def sum_rows(x: jax.Array, min_rows: int = 64) -> jax.Array:
    """Sum of `x (..., C)` over all leading axes -> `(C,)`.

    Folds halves with elementwise adds while the row count is even, then reduces the rest:
    XLA:CPU runs a reduction over leading axes whose operand is a fused slice/multiply about
    8x slower than these vectorised, multi-threaded adds.
    """
    x = x.reshape(-1, x.shape[-1])
    while x.shape[0] > min_rows and x.shape[0] % 2 == 0:
        half = x.shape[0] // 2
        x = x[:half] + x[half:]
    return jnp.sum(x, axis=0)


def _depthwise_forward(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    kh, kw = kernel.shape[:2]
    out_hw = _out_hw(xp.shape[1:3], (kh, kw), strides)
    y = None
    for i in range(kh):
        for j in range(kw):
            term = _shifted(xp, i, j, out_hw, strides) * kernel[i, j]
            y = term if y is None else y + term
    return y


def depthwise_conv(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """Depthwise 'VALID' conv of padded `xp (B, H, W, C)` with `kernel (kh, kw, C)`."""
    return _depthwise_vjp(tuple(strides))(xp, kernel)


@functools.lru_cache(maxsize=None)
def _depthwise_vjp(strides: tuple[int, int]) -> Callable:
    """A custom-VJP depthwise conv for fixed strides: the input gradient is the transpose of
    the shifted multiply-adds (pads of scaled slices); the kernel gradient multiplies each
    tap's slice by the output gradient and reduces over (B, Ho, Wo)."""
    @jax.custom_vjp
    def conv(xp, kernel):
        return _depthwise_forward(xp, kernel, strides)

    def fwd(xp, kernel):
        return _depthwise_forward(xp, kernel, strides), (xp, kernel)

    def bwd(residuals, g):
        xp, kernel = residuals
        _, vjp_x = jax.vjp(lambda a: _depthwise_forward(a, kernel, strides), xp)
        (gx,) = vjp_x(g)
        kh, kw = kernel.shape[:2]
        out_hw = g.shape[1:3]
        g32 = g.astype(jnp.float32)
        gk = jnp.stack([sum_rows(_shifted(xp, i, j, out_hw, strides).astype(jnp.float32) * g32)
                        for i in range(kh) for j in range(kw)])
        return gx, gk.reshape(kernel.shape).astype(kernel.dtype)

    conv.defvjp(fwd, bwd)
    return conv


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
           padding: PaddingLike = "SAME", groups: int = 1, impl: str = "auto") -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=groups)`.

    `x (B, H, W, I)`, `kernel (kh, kw, I / groups, O)` -> `(B, Ho, Wo, O)`, computed in the
    dtype the inputs share. Group counts other than 1 and I (depthwise) fall back to lax.
    """
    strides = tuple(strides)
    kh, kw, kin, cout = kernel.shape
    cin = x.shape[-1]
    pads = _pairs(padding, x.shape[1:3], (kh, kw), strides)
    depthwise = groups == cin and kin == 1 and groups > 1
    if resolve_impl(impl) == "lax" or (groups != 1 and not depthwise):
        return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN,
                                        feature_group_count=groups)
    if depthwise:
        xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),)) if any(map(any, pads)) else x
        if cout != cin:  # channel multiplier m: output o reads input o // m
            xp = jnp.repeat(xp, cout // cin, axis=-1)
        return depthwise_conv(xp, kernel.reshape(kh, kw, cout), strides)
    no_pad = not any(map(any, pads))
    if (kh, kw) == (1, 1) and strides == (1, 1) and no_pad:
        return _matmul(x, kernel.reshape(cin, cout))
    if (kh, kw) == strides and no_pad:
        b, h, w, _ = x.shape
        x = x[:, :h - h % kh, :w - w % kw]
        return _matmul(space_to_depth(x, kh, kw), kernel.reshape(kh * kw * cin, cout))
    xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),)) if not no_pad else x
    if cout < cin and strides == (1, 1):
        return _matmul_then_shift(xp, kernel)
    return _matmul(im2col(xp, (kh, kw), strides), kernel.reshape(kh * kw * cin, cout))


def _matmul_then_shift(xp: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'VALID' conv of padded `xp` as one matmul to every tap's output channels
    `(B, Hp, Wp, kh*kw*O)`, then the kh*kw shifted O-channel slices summed.

    The same sum as im2col + matmul, but the big intermediate has kh*kw*O channels instead of
    kh*kw*I: cheaper when O < I (an output head: 16 -> 3 channels).
    """
    kh, kw, cin, cout = kernel.shape
    out_hw = _out_hw(xp.shape[1:3], (kh, kw), (1, 1))
    taps = _matmul(xp, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout))
    y = None
    for t in range(kh * kw):
        tap = taps[..., t * cout:(t + 1) * cout]
        term = _shifted(tap, t // kw, t % kw, out_hw, (1, 1))
        y = term if y is None else y + term
    return y


def conv_transpose_stride(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
    """torch `ConvTranspose2d` with kernel == stride, no padding: `x (B, h, w, I)`, kernel
    `(k, k, I, O)` (torch weight `.transpose(2, 3, 0, 1)`) -> `(B, k*h, k*w, O)`.

    Fast form: one matmul to `(B, h, w, k*k*O)` + depth-to-space.
    """
    k, k2, cin, cout = kernel.shape
    if resolve_impl(impl) == "lax":
        return lax.conv_general_dilated(x, jnp.flip(kernel, (0, 1)), (1, 1),
                                        ((k - 1, k - 1), (k2 - 1, k2 - 1)),
                                        lhs_dilation=(k, k2), dimension_numbers=_DN)
    w = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k2 * cout)
    return depth_to_space(_matmul(x, w), k, k2)


class Conv(nn.Module):
    """Drop-in `nn.Conv` (params `kernel (kh, kw, I/groups, O)`, `bias (O,)`) over `conv2d`.

    `dtype=None` computes in the inputs' and params' promoted dtype, as `nn.Conv` does.
    """
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: PaddingLike = "SAME"
    feature_group_count: int = 1
    use_bias: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        if cin % self.feature_group_count:
            raise ValueError(f"Conv: {cin} input channels not divisible by "
                             f"feature_group_count={self.feature_group_count}")
        kernel = self.param("kernel", self.kernel_init,
                            (kh, kw, cin // self.feature_group_count, self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        strides = ((self.strides, self.strides) if isinstance(self.strides, int)
                   else tuple(self.strides))
        y = conv2d(x, kernel, strides, self.padding, self.feature_group_count, self.impl)
        return y if bias is None else y + bias


class ConvTranspose(nn.Module):
    """torch `nn.ConvTranspose2d` with kernel == stride, no padding (the DPT's upsamplers);
    params as `layers.ConvTranspose`: `kernel (k, k, I, O)`, `bias (O,)`."""
    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    use_bias: bool = True
    dtype: Any = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if self.stride != k or self.padding:
            raise ValueError(f"conv_ops.ConvTranspose needs kernel == stride and padding 0, got "
                             f"kernel {k}, stride {self.stride}, padding {self.padding}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, x.shape[-1], self.features), jnp.float32)
        y = conv_transpose_stride(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, *, use_bias: bool = True,
         dtype=jnp.float32, impl: str = "auto", name: str | None = None) -> Conv:
    """`Conv` with torch-style explicit symmetric padding (as `layers.conv`, plus `impl`)."""
    return Conv(features, (kernel, kernel), strides=(stride, stride),
                padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                dtype=dtype, param_dtype=jnp.float32, impl=impl, name=name)
