"""Building blocks of the blur stem and the decoder, NHWC: NAF block, FFT branch, Up, Down.

Every convolution and LayerNorm comes from the module's `backend` (models/backends.py): the
params of `nn.Conv` and `nn.LayerNorm` (eps 1e-6, float32) whichever backend computes them.

Compute dtype: convolutions run in `dtype`, params are float32, LayerNorm and FFT in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models.backends import LAX, Backend


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    """torch `PixelShuffle(r)` in NHWC: `(B, h, w, C*r*r) -> (B, h*r, w*r, C)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


# ------------------------------------------------------------------ blocks


class FFTBranch(nn.Module):
    """rfft2 -> 1x1 conv on [real, imag] -> GELU -> 1x1 conv -> irfft2; `(B,h,w,C) -> same`.

    The transforms run in float32, the 1x1 convs in `dtype`; returns `dtype`.
    """
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, c = x.shape
        conv = self.backend.conv
        spec = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2))
        y = jnp.concatenate([spec.real, spec.imag], axis=-1)
        y = nn.gelu(conv(2 * c, (1, 1), dtype=self.dtype, name="conv1")(y), approximate=False)
        y = conv(2 * c, (1, 1), dtype=self.dtype, name="conv2")(y).astype(jnp.float32)
        real, imag = jnp.split(y, 2, axis=-1)
        out = jnp.fft.irfft2(jax.lax.complex(real, imag), s=(h, w), axes=(1, 2))
        return out.astype(self.dtype)


class NAFBlock(nn.Module, kw_only=True):
    """NAFNet block (+ optional FFT branch): `(B, h, w, C) -> (B, h, w, C)` in `dtype`.

    Spatial mixer: LN -> 1x1 (dw_expand*C) -> depthwise 3x3 -> SimpleGate -> simplified channel
    attention -> 1x1 (C), added with per-channel `beta` (init 0). FFN: LN -> 1x1 -> SimpleGate ->
    1x1, added with `gamma` (init 0). The FFT branch, when on, is added to the block input.
    SimpleGate (the product of the two channel halves) is the `gate` of the conv before it.
    """
    dw_expand: int = 2
    ffn_expand: int = 2
    fft: bool = False
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt = x.shape[-1], self.dtype
        conv, norm = self.backend.conv, self.backend.norm
        x = x.astype(dt)
        hidden = self.dw_expand * c
        y = conv(hidden, (1, 1), dtype=dt, name="conv1")(norm(name="norm1")(x))
        y = conv(hidden, (3, 3), padding=1, feature_group_count=hidden, gate=True, dtype=dt,
                 name="conv2")(y)
        y = y * conv(hidden // 2, (1, 1), dtype=dt, name="sca")(
            jnp.mean(y, axis=(1, 2), keepdims=True))
        y = conv(c, (1, 1), dtype=dt, name="conv3")(y)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
        out = x + beta.astype(dt) * y
        if self.fft:
            out = out + FFTBranch(dtype=dt, backend=self.backend, name="fft")(x)
        y = conv(self.ffn_expand * c, (1, 1), gate=True, dtype=dt, name="conv4")(
            norm(name="norm2")(out))
        y = conv(c, (1, 1), dtype=dt, name="conv5")(y)
        gamma = self.param("gamma", nn.initializers.zeros, (c,), jnp.float32)
        return out + gamma.astype(dt) * y


class Up(nn.Module):
    """1x1 conv to 4C + pixel shuffle: `(B, h, w, 2C) -> (B, 2h, 2w, C)`."""
    features: int
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return pixel_shuffle(self.backend.conv(4 * self.features, (1, 1), use_bias=False,
                                               dtype=self.dtype, name="conv")(x))


class Down(nn.Module):
    """2x2 stride-2 conv + LayerNorm: `(B, 2h, 2w, C/2) -> (B, h, w, C)`."""
    features: int
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.backend.conv(self.features, (2, 2), strides=2, padding="VALID",
                              dtype=self.dtype, name="conv")(x)
        return self.backend.norm(name="norm")(x).astype(self.dtype)
