"""Blur stem and reversible coupling decoder (RevCol/AdaRevD form), NHWC.

Levels k = 0..3 run coarse to fine at scales 1/8, 1/4, 1/2, 1 with `width * 2**(3-k)` channels;
the bottleneck `x` sits at 1/16 with `16 * width` channels. One sub-decoder updates every level:

    c_k' = alpha_k * c_k + L_k(z_k),   z_k = Up(c_{k-1}') + Down(c_{k+1}) [+ ADA_k(z_k, D_k)]

with `c_{-1}' = x` and no Down term at the finest level; `sharp = blurry + Head(c_3')`.
It inverts fine to coarse: `c_k = (c_k' - L_k(z_k)) / alpha_k`, where `z_k` needs only `c_{k-1}'`
(new) and `c_{k+1}` (already recovered). See docs/architecture.md.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models.ada import AdaptiveDepthAttention
from radblur_jax.models.reversible import reversible_sequence

NUM_LEVELS = 4
ALPHA_MIN = 1e-3

States = tuple  # (c_0, c_1, c_2, c_3), coarse to fine, each (B, h_k, w_k, C_k) float32

# Compute dtype: convolutions run in `dtype`, params are float32, LayerNorm and FFT in float32;
# the states of the reversible pyramid stay float32 (inversion divides by alpha).


def level_channels(width: int) -> tuple[int, ...]:
    """Channels per decoder level, coarse (1/8) to fine (1)."""
    return tuple(width * 2 ** (NUM_LEVELS - 1 - k) for k in range(NUM_LEVELS))


def clamp_alpha(alpha: jax.Array) -> jax.Array:
    """`sign(a) * max(|a|, 1e-3)` (sign(0) := +1), so the coupling stays invertible."""
    sign = jnp.where(alpha >= 0, 1.0, -1.0).astype(alpha.dtype)
    return sign * jnp.maximum(jnp.abs(alpha), ALPHA_MIN)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    """torch `PixelShuffle(r)` in NHWC: `(B, h, w, C*r*r) -> (B, h*r, w*r, C)`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def simple_gate(x: jax.Array) -> jax.Array:
    """NAFNet SimpleGate: split channels in halves and multiply."""
    a, b = jnp.split(x, 2, axis=-1)
    return a * b


# ------------------------------------------------------------------ conv factories
# One per kind of convolution, so a faster equivalent (same param names and shapes) can replace
# `nn.Conv` in one place. Params `kernel (kh, kw, I/groups, O)`, `bias (O,)`, float32.


def conv1x1(features: int, dtype, name: str | None = None, *, use_bias: bool = True) -> nn.Module:
    """Pointwise conv `(B, h, w, I) -> (B, h, w, features)`."""
    return nn.Conv(features, (1, 1), use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                   name=name)


def conv3x3(features: int, dtype, name: str | None = None, *,
            kernel_init=nn.initializers.lecun_normal()) -> nn.Module:
    """3x3 conv, zero padding 1: `(B, h, w, I) -> (B, h, w, features)`."""
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init,
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def depthwise3x3(features: int, dtype, name: str | None = None) -> nn.Module:
    """Depthwise 3x3 conv, zero padding 1: `(B, h, w, C) -> (B, h, w, C)`, C = features."""
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=features,
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def down2x2(features: int, dtype, name: str | None = None) -> nn.Module:
    """2x2 stride-2 conv: `(B, 2h, 2w, I) -> (B, h, w, features)`."""
    return nn.Conv(features, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype,
                   param_dtype=jnp.float32, name=name)


def _layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


# ------------------------------------------------------------------ blocks


class FFTBranch(nn.Module):
    """rfft2 -> 1x1 conv on [real, imag] -> GELU -> 1x1 conv -> irfft2; `(B,h,w,C) -> same`.

    The transforms run in float32, the 1x1 convs in `dtype`; returns `dtype`.
    """
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, c = x.shape
        spec = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2))
        y = jnp.concatenate([spec.real, spec.imag], axis=-1)
        y = nn.gelu(conv1x1(2 * c, self.dtype, "conv1")(y), approximate=False)
        y = conv1x1(2 * c, self.dtype, "conv2")(y).astype(jnp.float32)
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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dt = x.shape[-1], self.dtype
        x = x.astype(dt)
        hidden = self.dw_expand * c
        y = _layer_norm("norm1")(x)
        y = conv1x1(hidden, dt, "conv1")(y)
        y = depthwise3x3(hidden, dt, "conv2")(y)
        y = simple_gate(y)
        y = y * conv1x1(hidden // 2, dt, "sca")(jnp.mean(y, axis=(1, 2), keepdims=True))
        y = conv1x1(c, dt, "conv3")(y)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
        out = x + beta.astype(dt) * y
        if self.fft:
            out = out + FFTBranch(dt, name="fft")(x)
        y = _layer_norm("norm2")(out)
        y = conv1x1(self.ffn_expand * c, dt, "conv4")(y)
        y = conv1x1(c, dt, "conv5")(simple_gate(y))
        gamma = self.param("gamma", nn.initializers.zeros, (c,), jnp.float32)
        return out + gamma.astype(dt) * y


class Up(nn.Module):
    """1x1 conv to 4C + pixel shuffle: `(B, h, w, 2C) -> (B, 2h, 2w, C)`."""
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return pixel_shuffle(conv1x1(4 * self.features, self.dtype, "conv", use_bias=False)(x))


class Down(nn.Module):
    """2x2 stride-2 conv + LayerNorm: `(B, 2h, 2w, C/2) -> (B, h, w, C)`."""
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = down2x2(self.features, self.dtype, "conv")(x)
        return _layer_norm("norm")(x).astype(self.dtype)


class BlurStem(nn.Module):
    """Shallow conv pyramid: `(B, H, W, 3)`, H and W multiples of 16 -> (states, bottleneck).

    states: `c^0` at 1/8, 1/4, 1/2, 1 (coarse to fine, `level_channels(width)`); bottleneck
    `(B, H/16, W/16, 16*width)`; all float32 (computed in `dtype`).
    """
    width: int
    blocks: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array) -> tuple[States, jax.Array]:
        if image.shape[1] % 16 or image.shape[2] % 16:
            raise ValueError(f"BlurStem: H, W must be multiples of 16, got {image.shape}")
        x = conv3x3(self.width, self.dtype, "intro")(image)
        fine_to_coarse = []
        for s in range(NUM_LEVELS + 1):
            for j in range(self.blocks):
                x = NAFBlock(dtype=self.dtype, name=f"scale{s}_block{j}")(x)
            if s == NUM_LEVELS:
                break
            fine_to_coarse.append(x.astype(jnp.float32))
            x = down2x2(2 * x.shape[-1], self.dtype, f"down{s}")(x)
        return tuple(reversed(fine_to_coarse)), x.astype(jnp.float32)


class SubDecoder(nn.Module):
    """One reversible sub-decoder: all 4 levels, coarse to fine, plus its output head.

    The head (3x3 conv) starts with 10x smaller weights than LeCun init, so every output
    starts close to the blurry input.

    `__call__(states, context) -> (new_states, image)`; `inverse(new_states, context) -> states`.
    `context = (bottleneck, depth, blurry)`: bottleneck `(B, H/16, W/16, 16*width)`, depth a tuple
    of 4 projected depth maps shaped like the states (or None without depth attention),
    blurry `(B, H, W, 3)`; image `(B, H, W, 3)` float32. The coupling `L_k` computes in `dtype`;
    states stay float32.
    """
    width: int
    fft: bool = True
    depth_attention: bool = True
    dw_expand: int = 2
    ffn_expand: int = 2
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        chans, dt = level_channels(self.width), self.dtype
        self.ups = [Up(c, dt) for c in chans]
        self.downs = [Down(c, dt) for c in chans[:-1]]
        self.blocks = [NAFBlock(self.dw_expand, self.ffn_expand, self.fft, dt) for _ in chans]
        if self.depth_attention:
            self.ada = [AdaptiveDepthAttention(dt) for _ in chans]
        self.alphas = [self.param(f"alpha_{k}", nn.initializers.constant(0.5), (c,), jnp.float32)
                       for k, c in enumerate(chans)]
        small = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")
        self.head = conv3x3(3, dt, kernel_init=small)

    def coupling(self, k: int, coarse_new: jax.Array, fine_old: Optional[jax.Array],
                 depth: Optional[Sequence[jax.Array]]) -> jax.Array:
        """`L_k(z_k)` (float32) from the new coarser state and the old finer state."""
        z = self.ups[k](coarse_new)
        if k < NUM_LEVELS - 1:
            z = z + self.downs[k](fine_old)
        if self.depth_attention:
            z = self.ada[k](z, depth[k])
        return self.blocks[k](z).astype(jnp.float32)

    def __call__(self, states: States, context: tuple) -> tuple[States, jax.Array]:
        bottleneck, depth, blurry = context
        new, coarse = [], bottleneck
        for k in range(NUM_LEVELS):
            fine = states[k + 1] if k < NUM_LEVELS - 1 else None
            c = clamp_alpha(self.alphas[k]) * states[k] + self.coupling(k, coarse, fine, depth)
            new.append(c)
            coarse = c
        return tuple(new), blurry + self.head(new[-1]).astype(jnp.float32)

    def inverse(self, new: States, context: tuple) -> States:
        bottleneck, depth, _ = context
        old = [None] * NUM_LEVELS
        for k in reversed(range(NUM_LEVELS)):
            coarse = new[k - 1] if k > 0 else bottleneck
            fine = old[k + 1] if k < NUM_LEVELS - 1 else None
            old[k] = (new[k] - self.coupling(k, coarse, fine, depth)) / clamp_alpha(self.alphas[k])
        return tuple(old)


class ReversibleDecoder(nn.Module):
    """K sub-decoders sharing one pyramid; their params are stacked on a leading K axis.

    `__call__(states, bottleneck, depth_features, blurry, num_active=None)`:
      states: `c^0` from `BlurStem`; bottleneck `(B, H/16, W/16, 16*width)`;
      depth_features: 4 maps at the level sizes (any channels), None without depth attention;
      blurry `(B, H, W, 3)`.
    Returns `(n, B, H, W, 3)` float32: the image of each of the first `n = num_active or K`
    sub-decoders. The stacked params `sub_decoders/...` are created by `nn.vmap` over
    `SubDecoder` (on small dummy inputs); the forward applies them with the pure step
    `SubDecoder.apply(p_i, states, context)` that the reversible chain needs. With
    `reversible=True` backprop inverts the coupling instead of storing activations, keeping only
    the pyramid entering every `anchor_every`-th sub-decoder (see reversible.py); `unroll=True`
    unrolls the scan over sub-decoders (for XLA cost analysis).
    """
    width: int
    num_sub_decoders: int
    fft: bool = True
    depth_attention: bool = True
    reversible: bool = True
    anchor_every: int = 2
    dw_expand: int = 2
    ffn_expand: int = 2
    unroll: bool = False
    dtype: jnp.dtype = jnp.float32

    def _sub_decoder_kwargs(self) -> dict:
        return dict(width=self.width, fft=self.fft, depth_attention=self.depth_attention,
                    dw_expand=self.dw_expand, ffn_expand=self.ffn_expand, dtype=self.dtype)

    def _create_stacked(self) -> None:
        """Creates `sub_decoders/...` params, `(K, ...)` each, with `nn.vmap` (init only)."""
        chans = level_channels(self.width)
        states = tuple(jnp.zeros((1, 2 ** (k + 1), 2 ** (k + 1), c)) for k, c in enumerate(chans))
        context = (jnp.zeros((1, 1, 1, 2 * chans[0])), states if self.depth_attention else None,
                   jnp.zeros((1, 16, 16, 3)))
        stacked = nn.vmap(SubDecoder, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=None, axis_size=self.num_sub_decoders)
        stacked(**self._sub_decoder_kwargs(), name="sub_decoders")(states, context)

    @nn.compact
    def __call__(self, states: States, bottleneck: jax.Array,
                 depth_features: Optional[Sequence[jax.Array]], blurry: jax.Array,
                 num_active: Optional[int] = None) -> jax.Array:
        depth = None
        if self.depth_attention:
            if depth_features is None:
                raise ValueError("ReversibleDecoder with depth attention needs depth_features")
            depth = tuple(conv1x1(c, self.dtype, f"depth_proj_{k}")(f).astype(jnp.float32)
                          for k, (c, f) in enumerate(zip(level_channels(self.width),
                                                         depth_features)))
        if self.is_initializing():
            self._create_stacked()
        stacked = self.variables["params"]["sub_decoders"]
        n = self.num_sub_decoders if num_active is None else int(num_active)
        if not 1 <= n <= self.num_sub_decoders:
            raise ValueError(f"num_active={n} outside 1..{self.num_sub_decoders}")
        stacked = jax.tree_util.tree_map(lambda a: a[:n], stacked)
        module = SubDecoder(**self._sub_decoder_kwargs(), parent=None)
        step = lambda p, s, ctx: module.apply({"params": p}, s, ctx)
        inverse = lambda p, s, ctx: module.apply({"params": p}, s, ctx, method=SubDecoder.inverse)
        _, images = reversible_sequence(step, inverse, stacked, tuple(states),
                                        (bottleneck, depth, blurry), reversible=self.reversible,
                                        anchor_every=self.anchor_every,
                                        unroll=True if self.unroll else 1)
        return images
