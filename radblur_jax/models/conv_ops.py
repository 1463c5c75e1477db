"""Convolutions in the forms XLA's CPU backend runs well, NHWC / HWIO (`backends.FAST`).

XLA:CPU lowers some convolutions and their gradients slowly: a grouped depthwise conv's backward
is much slower than the same sum written as shifted multiply-adds, and a 1x1 conv slower than
the matmul it is. `conv2d(..., impl="fast")` computes the same function as
`lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=groups)` as:

- 1x1, stride 1: one 2-D matmul `(B*H*W, I) @ (I, O)`;
- kernel == stride, no padding (2x2/2 downsampling, ViT patch embedding): space-to-depth
  (patchify) + one 2-D matmul;
- depthwise (groups == I): kh*kw shifted multiply-adds; the stride-1 "same" case
  (`depthwise_same`, the NAF blocks' 3x3) has a custom VJP that materialises its inputs once
  and computes the input gradient as one more shifted pass;
- stride-1 full convs with few outputs (`kh*kw*O <= 2*I`: the decoder's 3-channel head):
  `taps_then_shift`, one matmul to every tap's output and a shifted sum. Inside the decoder's
  scan XLA:CPU keeps such a conv's gradients with non-canonical dimension labels, and runs them
  far slower than the same conv outside a loop;
- other full convs (3x3, 3x3 stride 2): `lax.conv_general_dilated` itself, which XLA:CPU runs
  as fast as im2col + matmul or faster, forward and gradients, as one library call.

Gradients of the matmul forms are 2-D matmuls by construction. `impl="lax"` (`backends.LAX`,
the accelerator formulation) is `lax.conv_general_dilated` for every convolution but the 1x1
ones, which both impls compute as the matmul (channel pieces and a gate as separate matmuls,
see `Conv`): as a convolution their kernel gradient is a convolution over the whole image
that XLA:CPU runs on transposed copies of the activation and its gradient, while a matmul's
gradients are matmuls on every backend. The Linen modules over these functions (`Conv`,
`ConvTranspose`, with `nn.Conv`'s parameter names) are in models/conv_modules.py.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")  # activations NHWC, kernels HWIO (flax's layout)
PaddingLike = str | int | Sequence[int | tuple[int, int]]


IMPLS = ("fast", "lax")


def check_impl(impl: str) -> str:
    """`impl` if it is "fast" or "lax" (`backends.resolve_backend` resolves "auto")."""
    if impl not in IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; expected one of {IMPLS}")
    return impl


def padding_pairs(padding: PaddingLike, in_hw: Sequence[int], kernel_hw: Sequence[int],
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


def matmul_channels(x: jax.Array, w: jax.Array) -> jax.Array:
    """`(..., I) @ (I, O) -> (..., O)` as one 2-D matmul."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    # lax directly when the dtypes agree (as `jnp.dot` would lower it, with less tracing).
    y = (lax.dot_general(x2, w, (((1,), (0,)), ((), ()))) if x.dtype == w.dtype
         else jnp.dot(x2, w))
    return y.reshape(lead + (w.shape[-1],))


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


def sum_rows(x: jax.Array, min_rows: int = 64) -> jax.Array:
    """Sum of `x (B, ..., C)` over all leading axes -> `(C,)`, for XLA:CPU (`impl="fast"`); a
    2-D `x (rows, C)` counts as one example.

    Folds halves of each example's rows with elementwise adds while their count is even, then
    reduces the rest: XLA:CPU runs a reduction over leading axes whose operand is a fused
    slice/multiply much slower than these vectorised, multi-threaded adds. The folds stay
    inside each example (axis 0 kept) so that a batch sharded over devices is never sliced
    across them: folding the flattened batch made the SPMD partitioner exchange halves between
    devices (a collective-permute per fold). Not for accelerators: their compilers fuse the
    folds into one kernel whose code doubles with every fold (`reduce_rows`).
    """
    x = x.reshape(x.shape[0] if x.ndim > 2 else 1, -1, x.shape[-1])
    while x.shape[1] > min_rows and x.shape[1] % 2 == 0:
        half = x.shape[1] // 2
        x = lax.add(lax.slice_in_dim(x, 0, half, axis=1),
                    lax.slice_in_dim(x, half, 2 * half, axis=1))
    return jnp.sum(x, axis=(0, 1))


def reduce_rows(x: jax.Array) -> jax.Array:
    """Sum of `x (..., C)` over all leading axes -> `(C,)` as one reduction (`impl="lax"`):
    a GPU or TPU compiler emits it as a reduction kernel."""
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


def _times_channels(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x (..., C) * w (C,)`, in `lax` when the dtypes agree (the same ops as `jnp`'s
    broadcasting multiply, traced without its wrappers: the depthwise convs and their
    gradients issue hundreds of these per step)."""
    if x.dtype != w.dtype:
        return x * w
    return lax.mul(x, lax.broadcast_in_dim(w, x.shape, (x.ndim - 1,)))


def _tap(kernel: jax.Array, i: int, j: int) -> jax.Array:
    """`kernel[i, j]` of a `(kh, kw, C)` kernel, as `lax` slicing."""
    return lax.index_in_dim(lax.index_in_dim(kernel, i, 0, keepdims=False), j, 0,
                            keepdims=False)


def _depthwise_forward(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    kh, kw = kernel.shape[:2]
    out_hw = _out_hw(xp.shape[1:3], (kh, kw), strides)
    y = None
    for i in range(kh):
        for j in range(kw):
            term = _times_channels(_shifted(xp, i, j, out_hw, strides), _tap(kernel, i, j))
            y = term if y is None else lax.add(y, term)
    return y


def _depthwise_kernel_grad(xp: jax.Array, g: jax.Array, kernel: jax.Array,
                           strides: tuple[int, int]) -> jax.Array:
    """Kernel gradient of `_depthwise_forward(xp, kernel, strides)` for output gradient `g`:
    per tap, the tap's slice of `xp` times `g`, summed with `sum_rows` (in float32)."""
    kh, kw = kernel.shape[:2]
    out_hw = g.shape[1:3]
    g32 = g.astype(jnp.float32)
    gk = jnp.stack([sum_rows(lax.mul(_shifted(xp, i, j, out_hw, strides).astype(jnp.float32),
                                     g32))
                    for i in range(kh) for j in range(kw)])
    return gk.reshape(kernel.shape).astype(kernel.dtype)


def depthwise_conv(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int]) -> jax.Array:
    """Depthwise 'VALID' conv of padded `xp (B, H, W, C)` with `kernel (kh, kw, C)`."""
    return _depthwise_vjp(tuple(strides))(xp, kernel)


@functools.cache
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
        return gx, _depthwise_kernel_grad(xp, g, kernel, strides)

    conv.defvjp(fwd, bwd)
    return conv


def _pad_hw(x: jax.Array, ph: int, pw: int) -> jax.Array:
    return _zero_pad(x, ((ph, ph), (pw, pw))) if ph or pw else x


def _zero_pad(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
    """Zero padding of `x (B, H, W, ...)`'s spatial axes by `pads` ((top, bottom), (left,
    right)); the other axes unpadded. `jnp.pad`'s result through `lax.pad` (less tracing)."""
    rest = ((0, 0, 0),) * (x.ndim - 1 - len(pads))
    config = ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + rest
    return lax.pad(x, jnp.zeros((), x.dtype), config)


@jax.custom_vjp
def depthwise_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 depthwise conv of `x (B, H, W, C)` with `kernel (kh, kw, C)` (odd sizes), zero
    padding `k // 2` on each side (the output keeps H, W): kh*kw shifted multiply-adds.

    Its VJP reads only `x`, `kernel` and the output gradient `g`, each materialised once
    (`lax.optimization_barrier`): the input gradient is the same shifted form over the padded
    `g` with the kernel flipped (one fused pass), the kernel gradient one product-and-`sum_rows`
    per tap. Without the barrier XLA:CPU fuses `g`'s producers (the recomputed forward, the
    gate's backward) into every tap's reduction and recomputes them kh*kw times.
    """
    kh, kw = kernel.shape[:2]
    return _depthwise_forward(_pad_hw(x, kh // 2, kw // 2), kernel, (1, 1))


def _depthwise_same_fwd(x, kernel):
    return depthwise_same(x, kernel), (x, kernel)


def _depthwise_same_bwd(residuals, g):
    x, kernel = residuals
    x, g = lax.optimization_barrier((x, g))
    kh, kw = kernel.shape[:2]
    gx = _depthwise_forward(_pad_hw(g, kh // 2, kw // 2), kernel[::-1, ::-1], (1, 1))
    gk = _depthwise_kernel_grad(_pad_hw(x, kh // 2, kw // 2), g, kernel, (1, 1))
    return gx.astype(x.dtype), gk


depthwise_same.defvjp(_depthwise_same_fwd, _depthwise_same_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
           padding: PaddingLike = "SAME", groups: int = 1, impl: str = "fast") -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, strides, padding, feature_group_count=groups)`.

    `x (B, H, W, I)`, `kernel (kh, kw, I / groups, O)` -> `(B, Ho, Wo, O)`, computed in the
    dtype the inputs share. Group counts other than 1 and I (depthwise) fall back to lax.
    """
    check_impl(impl)
    strides = tuple(strides)
    kh, kw, kin, cout = kernel.shape
    cin = x.shape[-1]
    pads = padding_pairs(padding, x.shape[1:3], (kh, kw), strides)
    depthwise = groups == cin and kin == 1 and groups > 1
    no_pad = not any(map(any, pads))
    if (kh, kw) == (1, 1) and strides == (1, 1) and no_pad and groups == 1:
        # Both impls: see the module docstring.
        return matmul_channels(x, kernel.reshape(cin, cout))
    if impl == "lax" or (groups != 1 and not depthwise):
        return lax.conv_general_dilated(x, kernel, strides, pads,
                                        dimension_numbers=DIMENSION_NUMBERS,
                                        feature_group_count=groups)
    if depthwise:
        if cout == cin and strides == (1, 1) and pads == ((kh // 2, kh // 2), (kw // 2, kw // 2)):
            return depthwise_same(x, kernel.reshape(kh, kw, cout))
        xp = _zero_pad(x, pads) if any(map(any, pads)) else x
        if cout != cin:  # channel multiplier m: output o reads input o // m
            xp = jnp.repeat(xp, cout // cin, axis=-1)
        return depthwise_conv(xp, kernel.reshape(kh, kw, cout), strides)
    if (kh, kw) == strides and no_pad:
        b, h, w, _ = x.shape
        x = x[:, :h - h % kh, :w - w % kw]
        return matmul_channels(space_to_depth(x, kh, kw), kernel.reshape(kh * kw * cin, cout))
    if strides == (1, 1) and kh * kw * cout <= 2 * cin:  # few outputs: the decoder's head
        return taps_then_shift(x, kernel, pads)
    # Other full convolutions (3x3, 3x3 stride 2): XLA:CPU's own convolution, whose forward
    # and gradients run as fast as im2col + matmul or faster at the network's shapes (the
    # im2col concatenation is a pass over kh*kw times the input), and compile to one library
    # call instead of a dozen fused kernels.
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=DIMENSION_NUMBERS)


def taps_then_shift(x: jax.Array, kernel: jax.Array,
                    pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Stride-1 full conv as one matmul to every tap's output, then a shifted sum.

    `z = x @ [K_00 .. K_ij ..]` gives `(B, H, W, kh*kw, O)`; the output at `(r, c)` is the sum
    over taps of `z[r + i - top, c + j - left, tap (i, j)]` (zero outside). The work and the
    intermediate are `kh*kw*O` channels per pixel, so this is the form for few outputs (the
    decoder's 3-channel head): its gradients are two 2-D matmuls and one shifted pass over the
    output gradient.
    """
    kh, kw, cin, cout = kernel.shape
    b, h, w, _ = x.shape
    (top, bottom), (left, right) = pads
    ho, wo = h + top + bottom - kh + 1, w + left + right - kw + 1
    z = matmul_channels(x, kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout))
    z = z.reshape(b, h, w, kh * kw, cout)
    # Padding z by the conv's padding aligns tap (i, j) of output (r, c) at z[r + i, c + j].
    zp = _zero_pad(z, pads)
    y = None
    for i in range(kh):
        for j in range(kw):
            term = zp[:, i:i + ho, j:j + wo, i * kw + j]
            y = term if y is None else y + term
    return y


def conv_transpose_stride(x: jax.Array, kernel: jax.Array, impl: str = "fast") -> jax.Array:
    """torch `ConvTranspose2d` with kernel == stride, no padding: `x (B, h, w, I)`, kernel
    `(k, k, I, O)` (torch weight `.transpose(2, 3, 0, 1)`) -> `(B, k*h, k*w, O)`.

    Fast form: one matmul to `(B, h, w, k*k*O)` + depth-to-space.
    """
    k, k2, cin, cout = kernel.shape
    if check_impl(impl) == "lax":
        return lax.conv_general_dilated(x, jnp.flip(kernel, (0, 1)), (1, 1),
                                        ((k - 1, k - 1), (k2 - 1, k2 - 1)),
                                        lhs_dilation=(k, k2), dimension_numbers=DIMENSION_NUMBERS)
    w = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k2 * cout)
    return depth_to_space(matmul_channels(x, w), k, k2)
