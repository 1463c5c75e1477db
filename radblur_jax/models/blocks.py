"""Building blocks of the blur stem and the decoder, NHWC: NAF block, FFT branch, Up, Down.

Every convolution and LayerNorm comes from the module's `backend` (models/backends.py): the
params of `nn.Conv` and `nn.LayerNorm` (eps 1e-6, float32) whichever backend computes them.

Compute dtype: convolutions run in `dtype`, params are float32, LayerNorm and FFT in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models import striped
from radblur_jax.models.backends import LAX, Backend
from radblur_jax.models.params import param
from radblur_jax.models.spmd import batchwise


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    """torch `PixelShuffle(r)` in NHWC: `(B, h, w, C*r*r) -> (B, h*r, w*r, C)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


# ------------------------------------------------------------------ blocks


class SpectralConv(nn.Module):
    """A 1x1 conv of channels-first maps `(B, I, N) -> (B, O, N)` in `dtype`, params as
    `nn.Conv` (`kernel (1, 1, I, O)`, `bias (O,)`): one batched matmul `(O, I) @ (I, N)` per
    image, so the maps keep their layout."""
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, cin, _ = x.shape
        kernel = param(self, "kernel", nn.initializers.lecun_normal(), (1, 1, cin, self.features))
        bias = param(self, "bias", nn.initializers.zeros, (self.features,))
        w = jnp.broadcast_to(kernel[0, 0].T.astype(self.dtype), (b, self.features, cin))
        y = jax.lax.dot_general(w, x.astype(self.dtype), (((2,), (1,)), ((0,), (0,))))
        return y + bias.astype(self.dtype)[:, None]


class FFTBranch(nn.Module):
    """rfft2 -> 1x1 conv on [real, imag] -> GELU -> 1x1 conv -> irfft2; `(B,h,w,C) -> same`.

    The transforms run in float32, the 1x1 convs in `dtype`; returns `dtype`. With the
    backend's `spectral_channels_first` (the lax backend) the spectrum stays `(B, C, h,
    w//2+1)`, the layout the FFT produces and consumes, and the 1x1 convs are batched matmuls
    on it (`SpectralConv`, the same params): the activation is transposed once on the way in
    and once on the way out, where the channels-last form also transposes the spectrum twice.
    """
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.backend.spectral_channels_first:
            return self._channels_first(x)
        _, h, w, c = x.shape
        conv = self.backend.conv
        spec = batchwise(lambda v: jnp.fft.rfft2(v, axes=(1, 2)))(x.astype(jnp.float32))
        y = jnp.concatenate([spec.real, spec.imag], axis=-1)
        y = nn.gelu(conv(2 * c, (1, 1), dtype=self.dtype, name="conv1")(y), approximate=False)
        y = conv(2 * c, (1, 1), dtype=self.dtype, name="conv2")(y).astype(jnp.float32)
        real, imag = jnp.split(y, 2, axis=-1)
        out = batchwise(lambda v: jnp.fft.irfft2(v, s=(h, w), axes=(1, 2)))(
            jax.lax.complex(real, imag))
        return out.astype(self.dtype)

    def _channels_first(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        spec = batchwise(jnp.fft.rfft2)(x.astype(jnp.float32).transpose(0, 3, 1, 2))  # B,C,h,wf
        wf = spec.shape[-1]
        # [real; imag] on the channel axis: two contiguous blocks per image in this layout.
        y = jnp.concatenate([spec.real, spec.imag], axis=1).reshape(b, 2 * c, h * wf)
        y = nn.gelu(SpectralConv(2 * c, dtype=self.dtype, name="conv1")(y), approximate=False)
        y = SpectralConv(2 * c, dtype=self.dtype, name="conv2")(y).astype(jnp.float32)
        spec = jax.lax.complex(y[:, :c], y[:, c:])
        out = batchwise(lambda v: jnp.fft.irfft2(v, s=(h, w)))(spec.reshape(b, c, h, wf))
        return out.transpose(0, 2, 3, 1).astype(self.dtype)


class NAFBlock(nn.Module, kw_only=True):
    """NAFNet block (+ optional FFT branch): `(B, h, w, C) -> (B, h, w, C)` in `dtype`.

    Spatial mixer: LN -> 1x1 (dw_expand*C) -> depthwise 3x3 -> SimpleGate -> simplified channel
    attention -> 1x1 (C), added with per-channel `beta` (init 0). FFN: LN -> 1x1 -> SimpleGate ->
    1x1, added with `gamma` (init 0). The FFT branch, when on, is added to the block input.
    SimpleGate (the product of the two channel halves) is the `gate` of the conv before it.

    `part` runs one piece of the block, for the striped forward (models/striped.py), which
    applies the whole block one band of rows at a time when the backend's `stripe_rows` asks
    for it: "expand" (LN -> 1x1), "mix" (depthwise 3x3 -> SimpleGate of an expanded band
    that carries a one-pixel halo on every side, zero where it lies outside the map: returns
    the band's own pixels), "fft" (the FFT branch of the input) and "finish" (the rest, given
    `mixed`, the mixer's rows before the channel attention, their image-wide mean
    `mixed_mean (B, 1, 1, C)`, and `spectral`, the FFT branch's rows or None).
    """
    dw_expand: int = 2
    ffn_expand: int = 2
    fft: bool = False
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array, part: str = "all", *, mixed: jax.Array | None = None,
                 mixed_mean: jax.Array | None = None,
                 spectral: jax.Array | None = None) -> jax.Array:
        x = x.astype(self.dtype)
        if part == "expand":
            return self._expand(x)
        if part == "mix":
            return self._mix(x, padding="VALID")
        if part == "fft":
            return FFTBranch(dtype=self.dtype, backend=self.backend, name="fft")(x)
        if part == "finish":
            return self._finish(x, mixed, mixed_mean, spectral)
        if part != "all":
            raise ValueError(f"NAFBlock: unknown part {part!r}")
        rows = striped.stripe_rows(x.shape[1], self.backend.stripe_rows)
        if rows and not self.is_initializing():
            return striped.naf_block_striped(self.clone(parent=None), self.variables["params"],
                                             x, rows)
        y = self._mix(self._expand(x))
        spectral = (FFTBranch(dtype=self.dtype, backend=self.backend, name="fft")(x)
                    if self.fft else None)
        return self._finish(x, y, jnp.mean(y, axis=(1, 2), keepdims=True), spectral)

    def _expand(self, x: jax.Array) -> jax.Array:
        hidden = self.dw_expand * x.shape[-1]
        return self.backend.conv(hidden, (1, 1), dtype=self.dtype, name="conv1")(
            self.backend.norm(name="norm1")(x))

    def _mix(self, t: jax.Array, padding: int | str = 1) -> jax.Array:
        hidden = t.shape[-1]
        return self.backend.conv(hidden, (3, 3), padding=padding, feature_group_count=hidden,
                                 gate=True, dtype=self.dtype, name="conv2")(t)

    def _finish(self, x: jax.Array, y: jax.Array, y_mean: jax.Array,
                spectral: jax.Array | None) -> jax.Array:
        c, dt = x.shape[-1], self.dtype
        conv, norm = self.backend.conv, self.backend.norm
        y = y * conv(y.shape[-1], (1, 1), dtype=dt, name="sca")(y_mean.astype(dt))
        y = conv(c, (1, 1), dtype=dt, name="conv3")(y)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
        out = x + beta.astype(dt) * y
        if spectral is not None:
            out = out + spectral
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
