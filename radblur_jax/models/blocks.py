"""Building blocks of the blur stem and the decoder, NHWC: NAF block, FFT branch, Up, Down.

Every convolution is a `conv_ops.Conv` (the params of `nn.Conv`) and every LayerNorm a
`norms.LayerNorm` (the params of `nn.LayerNorm`); `conv_impl` picks their formulation
(configs.CONV_IMPLS). Gated pairs travel as channel pieces (a tuple of the two halves; see
`conv_ops.Conv`), so the fast forms never concatenate or split activations.

Compute dtype: convolutions run in `dtype`, params are float32, LayerNorm and FFT in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models import conv_ops
from radblur_jax.models.norms import LayerNorm


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    """torch `PixelShuffle(r)` in NHWC: `(B, h, w, C*r*r) -> (B, h*r, w*r, C)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def simple_gate(x: conv_ops.Pieces) -> jax.Array:
    """NAFNet SimpleGate: the product of the two channel halves (an array, or its two pieces)."""
    a, b = x if isinstance(x, (tuple, list)) else jnp.split(x, 2, axis=-1)
    return a * b


# ------------------------------------------------------------------ conv and norm factories


def conv1x1(features: int, dtype, name: str | None = None, *, use_bias: bool = True,
            impl: str = "auto") -> conv_ops.Conv:
    """Pointwise conv `(B, h, w, I) -> (B, h, w, features)`."""
    return conv_ops.Conv(features, (1, 1), use_bias=use_bias, dtype=dtype,
                         param_dtype=jnp.float32, impl=impl, name=name)


def conv3x3(features: int, dtype, name: str | None = None, *,
            kernel_init=nn.initializers.lecun_normal(), impl: str = "auto") -> conv_ops.Conv:
    """3x3 conv, zero padding 1: `(B, h, w, I) -> (B, h, w, features)`."""
    return conv_ops.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init,
                         dtype=dtype, param_dtype=jnp.float32, impl=impl, name=name)


def depthwise3x3(features: int, dtype, name: str | None = None, *,
                 impl: str = "auto") -> conv_ops.Conv:
    """Depthwise 3x3 conv, zero padding 1: `(B, h, w, C) -> (B, h, w, C)`, C = features."""
    return conv_ops.Conv(features, (3, 3), padding=((1, 1), (1, 1)),
                         feature_group_count=features, dtype=dtype, param_dtype=jnp.float32,
                         impl=impl, name=name)


def down2x2(features: int, dtype, name: str | None = None, *,
            impl: str = "auto") -> conv_ops.Conv:
    """2x2 stride-2 conv: `(B, 2h, 2w, I) -> (B, h, w, features)`."""
    return conv_ops.Conv(features, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype,
                         param_dtype=jnp.float32, impl=impl, name=name)


def layer_norm(name: str, impl: str = "auto") -> LayerNorm:
    """Channel LayerNorm, eps 1e-6, float32."""
    return LayerNorm(1e-6, impl, name=name)


# ------------------------------------------------------------------ blocks


class FFTBranch(nn.Module):
    """rfft2 -> 1x1 conv on [real, imag] -> GELU -> 1x1 conv -> irfft2; `(B,h,w,C) -> same`.

    The transforms run in float32, the 1x1 convs in `dtype`; returns `dtype`.
    """
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, c = x.shape
        spec = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2))
        y = jnp.concatenate([spec.real, spec.imag], axis=-1)
        y = nn.gelu(conv1x1(2 * c, self.dtype, "conv1", impl=self.conv_impl)(y),
                    approximate=False)
        y = conv1x1(2 * c, self.dtype, "conv2", impl=self.conv_impl)(y).astype(jnp.float32)
        real, imag = jnp.split(y, 2, axis=-1)
        out = jnp.fft.irfft2(jax.lax.complex(real, imag), s=(h, w), axes=(1, 2))
        return out.astype(self.dtype)


class NAFBlock(nn.Module):
    """NAFNet block (+ optional FFT branch): `(B, h, w, C) -> (B, h, w, C)` in `dtype`.

    Spatial mixer: LN -> 1x1 (dw_expand*C) -> depthwise 3x3 -> SimpleGate -> simplified channel
    attention -> 1x1 (C), added with per-channel `beta` (init 0). FFN: LN -> 1x1 -> SimpleGate ->
    1x1, added with `gamma` (init 0). The FFT branch, when on, is added to the block input.
    """
    dw_expand: int = 2
    ffn_expand: int = 2
    fft: bool = False
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt, impl = x.shape[-1], self.dtype, self.conv_impl
        x = x.astype(dt)
        hidden = self.dw_expand * c
        y = layer_norm("norm1", impl)(x)
        y = conv1x1(hidden, dt, "conv1", impl=impl)(y, out_pieces=2)
        y = simple_gate(depthwise3x3(hidden, dt, "conv2", impl=impl)(y, out_pieces=2))
        y = y * conv1x1(hidden // 2, dt, "sca", impl=impl)(jnp.mean(y, axis=(1, 2), keepdims=True))
        y = conv1x1(c, dt, "conv3", impl=impl)(y)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
        out = x + beta.astype(dt) * y
        if self.fft:
            out = out + FFTBranch(dt, impl, name="fft")(x)
        y = layer_norm("norm2", impl)(out)
        y = simple_gate(conv1x1(self.ffn_expand * c, dt, "conv4", impl=impl)(y, out_pieces=2))
        y = conv1x1(c, dt, "conv5", impl=impl)(y)
        gamma = self.param("gamma", nn.initializers.zeros, (c,), jnp.float32)
        return out + gamma.astype(dt) * y


class Up(nn.Module):
    """1x1 conv to 4C + pixel shuffle: `(B, h, w, 2C) -> (B, 2h, 2w, C)`."""
    features: int
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return pixel_shuffle(conv1x1(4 * self.features, self.dtype, "conv", use_bias=False,
                                     impl=self.conv_impl)(x))


class Down(nn.Module):
    """2x2 stride-2 conv + LayerNorm: `(B, 2h, 2w, C/2) -> (B, h, w, C)`."""
    features: int
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = down2x2(self.features, self.dtype, "conv", impl=self.conv_impl)(x)
        return layer_norm("norm", self.conv_impl)(x).astype(self.dtype)
