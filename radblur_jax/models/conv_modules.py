"""Linen modules over `conv_ops`: `Conv` and `ConvTranspose`, the `Backend` factories'
convolutions (`backends.FAST`, `backends.LAX`).

Their params have the names and shapes of `nn.Conv` / `layers.ConvTranspose`, whichever `impl`
computes them; `Conv` also takes channel pieces and can end in a SimpleGate (its docstring).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models import conv_ops
from radblur_jax.models.conv_ops import PaddingLike
from radblur_jax.models.params import param

Pieces = jax.Array | Sequence[jax.Array]


class Conv(nn.Module):
    """Drop-in `nn.Conv` (params `kernel (kh, kw, I/groups, O)`, `bias (O,)`) over `conv2d`.

    `dtype=None` computes in the inputs' and params' promoted dtype, as `nn.Conv` does.
    `kernel_size` and `strides` take ints (square) or pairs; `padding` as `nn.Conv`.

    `x` may be a tuple of arrays, meaning their concatenation on channels (ADA's `[LN(z), d]`),
    and `gate=True` returns NAFNet's SimpleGate of the output, the product of its two channel
    halves. The fast form never builds that concatenation or slices the output: a 1x1 conv sums
    one matmul per input piece with the matching kernel rows, per output half; a depthwise conv
    runs per channel half. A concatenate or split is one more pass over the activations, and
    its backward another. `impl="lax"` concatenates, convolves and splits, except for 1x1
    convs (matmul pieces, as the fast form).
    """
    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = (1, 1)
    padding: PaddingLike = "SAME"
    feature_group_count: int = 1
    use_bias: bool = True
    gate: bool = False
    dtype: Any | None = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    impl: str = "fast"

    @nn.compact
    def __call__(self, x: Pieces) -> jax.Array:
        pieces = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        kh, kw = _int_pair(self.kernel_size)
        cin = sum(p.shape[-1] for p in pieces)
        groups = self.feature_group_count
        if cin % groups:
            raise ValueError(f"Conv: {cin} input channels not divisible by "
                             f"feature_group_count={groups}")
        out_pieces = 2 if self.gate else 1
        if self.features % out_pieces:
            raise ValueError(f"Conv: gate=True needs an even number of outputs, got "
                             f"{self.features}")
        kernel = param(self, "kernel", self.kernel_init, (kh, kw, cin // groups, self.features),
                       self.param_dtype)
        bias = (param(self, "bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        *pieces, kernel, bias = nn.dtypes.promote_dtype(*pieces, kernel, bias, dtype=self.dtype)
        outs = self._pieces(pieces, kernel, bias, out_pieces)
        return outs[0] * outs[1] if self.gate else outs[0]

    def _pieces(self, pieces: Sequence[jax.Array], kernel: jax.Array, bias: jax.Array | None,
                out_pieces: int) -> list[jax.Array]:
        """The conv of the concatenated `pieces` as `out_pieces` equal channel slices."""
        (kh, kw), strides = kernel.shape[:2], _int_pair(self.strides)
        groups, cin = self.feature_group_count, sum(p.shape[-1] for p in pieces)
        fast = conv_ops.check_impl(self.impl) == "fast"
        pointwise = (kh, kw) == (1, 1) and strides == (1, 1) and groups == 1 and not any(
            map(any, conv_ops.padding_pairs(self.padding, pieces[0].shape[1:3], (1, 1), strides)))
        depthwise = groups == cin == self.features and groups > 1
        if pointwise and (len(pieces) > 1 or out_pieces > 1):
            return _pointwise_pieces(pieces, kernel[0, 0], bias, out_pieces)
        if fast and depthwise and (len(pieces) > 1 or out_pieces > 1):
            # Channel c of the output reads channel c of the input only: convolve per slice.
            if [p.shape[-1] for p in pieces] != [cin // out_pieces] * out_pieces:
                pieces = jnp.split(_concat(pieces), out_pieces, axis=-1)
            outs, at = [], 0
            for piece in pieces:
                c = piece.shape[-1]
                out = conv_ops.conv2d(piece, kernel[..., at:at + c], strides, self.padding, c,
                                      self.impl)
                outs.append(out if bias is None else out + bias[at:at + c])
                at += c
            return outs
        y = conv_ops.conv2d(_concat(pieces), kernel, strides, self.padding, groups, self.impl)
        y = y if bias is None else y + bias
        return [y] if out_pieces == 1 else jnp.split(y, out_pieces, axis=-1)


def _concat(pieces: Sequence[jax.Array]) -> jax.Array:
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)


def _int_pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _pointwise_pieces(pieces: Sequence[jax.Array], kernel: jax.Array, bias: jax.Array | None,
                      out_pieces: int) -> list[jax.Array]:
    """1x1 conv of channel pieces `(B, H, W, I_i)` with `kernel (sum I_i, O)`: per output piece,
    the sum of one matmul per input piece."""
    step = kernel.shape[1] // out_pieces
    outs = []
    for o in range(out_pieces):
        cols = slice(o * step, (o + 1) * step)
        y, at = None, 0
        for piece in pieces:
            c = piece.shape[-1]
            term = conv_ops.matmul_channels(piece, kernel[at:at + c, cols])
            y = term if y is None else y + term
            at += c
        outs.append(y if bias is None else y + bias[cols])
    return outs


class ConvTranspose(nn.Module):
    """torch `nn.ConvTranspose2d` with kernel == stride, no padding (the DPT's upsamplers);
    params as `layers.ConvTranspose`: `kernel (k, k, I, O)`, `bias (O,)`."""
    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    use_bias: bool = True
    dtype: Any = jnp.float32
    impl: str = "fast"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if self.stride != k or self.padding:
            raise ValueError(f"ConvTranspose needs kernel == stride and padding 0, got "
                             f"kernel {k}, stride {self.stride}, padding {self.padding}")
        kernel = param(self, "kernel", nn.initializers.lecun_normal(),
                       (k, k, x.shape[-1], self.features))
        y = conv_ops.conv_transpose_stride(x.astype(self.dtype), kernel.astype(self.dtype),
                                           self.impl)
        if self.use_bias:
            bias = param(self, "bias", nn.initializers.zeros, (self.features,))
            y = y + bias.astype(self.dtype)
        return y

