"""DINOv2 vision transformer (Linen), parameter paths as the original state-dict keys.

`DinoViT(cfg)` takes the encoder `ConfigDict` of `configs.encoder_config` (see
docs/conventions.md) and maps ImageNet-normalised images `(B, H, W, 3)`, sides multiples of the
patch size, to a `ViTOutput`. The patch embedding's conv comes from `backend`
(models/backends.py); the transformer is `nn.Dense` / `nn.LayerNorm`.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.models import layers
from radblur_jax.models.attention_ops import attention
from radblur_jax.models.backends import LAX, Backend
from radblur_jax.models.remat import deferred_remat

LN_EPS = 1e-6


class ViTOutput(NamedTuple):
    """Encoder outputs; `h, w = H / patch, W / patch`.

    taps: per tapped block, final-normed patch tokens `(B, h, w, D)` (prefix tokens dropped).
    cls_tokens: per tapped block, final-normed cls token `(B, D)`.
    last_hidden: final-normed full sequence after the last block `(B, 1 + R + h * w, D)`,
        order `[cls, registers, patches]`.
    """
    taps: tuple
    cls_tokens: tuple
    last_hidden: jax.Array


def swiglu_hidden(embed_dim: int, mlp_ratio: float) -> int:
    """SwiGLU hidden width: two thirds of the MLP width, rounded up to a multiple of 8."""
    return (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


def _dense(features: int, name: str, dtype) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def resize_pos_embed(pos: jax.Array, grid: tuple[int, int], mode: str) -> jax.Array:
    """Resizes patch position embeddings `(M, M, D)` to `grid = (h, w)`, in float32.

    mode "offset": original DINOv2, `scale_factor=((h+0.1)/M, (w+0.1)/M)`, no antialias.
    mode "antialias": original DINOv2 `_reg` and HF Dinov2WithRegisters, `size=(h, w)`,
        antialias. mode "size": HF Dinov2Model, `size=(h, w)`, no antialias.
    Unchanged when `grid == (M, M)`.
    """
    m = pos.shape[0]
    h, w = grid
    if (h, w) == (m, m):
        return pos
    x = pos.astype(jnp.float32)[None]
    if mode == "offset":
        y = layers.bicubic_resize(x, scale_factor=((h + 0.1) / m, (w + 0.1) / m))
    elif mode == "antialias":
        y = layers.bicubic_resize(x, size=(h, w), antialias=True)
    elif mode == "size":
        y = layers.bicubic_resize(x, size=(h, w))
    else:
        raise ValueError(f"unknown pos_embed_mode {mode!r}; expected offset, antialias or size")
    if y.shape[1:3] != (h, w):
        raise ValueError(f"position-embedding resize gave {y.shape[1:3]}, expected {(h, w)}")
    return y[0]


class PatchEmbed(nn.Module, kw_only=True):
    """Non-overlapping patch projection `(B, H, W, 3) -> (B, H/p, W/p, D)` (param `proj`)."""
    embed_dim: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        p = self.patch_size
        return self.backend.conv(self.embed_dim, (p, p), strides=p, padding="VALID",
                                 dtype=self.dtype, name="proj")(x.astype(self.dtype))


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv, `(B, T, D) -> (B, T, D)`."""
    num_heads: int
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = _dense(3 * d, "qkv", self.dtype)(x).reshape(b, t, 3, self.num_heads, -1)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.impl)
        return _dense(d, "proj", self.dtype)(out.reshape(b, t, d))


class Mlp(nn.Module):
    """fc1 -> exact-erf GELU -> fc2."""
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.gelu(_dense(self.hidden, "fc1", self.dtype)(x), approximate=False)
        return _dense(x.shape[-1], "fc2", self.dtype)(y)


class SwiGLU(nn.Module):
    """w12 -> chunk(2) -> silu(x1) * x2 -> w3 (ViT-g)."""
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x1, x2 = jnp.split(_dense(2 * self.hidden, "w12", self.dtype)(x), 2, axis=-1)
        return _dense(x.shape[-1], "w3", self.dtype)(nn.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel scale `gamma` (torch `ls{1,2}.gamma`)."""
    init_value: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],),
                           jnp.float32)
        return x * gamma.astype(x.dtype)


class Block(nn.Module, kw_only=True):
    """Pre-norm transformer block with LayerScale."""
    num_heads: int
    mlp_hidden: int
    ffn: str = "mlp"
    attention_impl: str = "auto"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = _layer_norm("norm1", self.dtype)(x)
        y = Attention(self.num_heads, impl=self.attention_impl, dtype=self.dtype, name="attn")(y)
        x = x + LayerScale(name="ls1")(y)
        y = _layer_norm("norm2", self.dtype)(x)
        ffn = SwiGLU if self.ffn == "swiglu" else Mlp
        y = ffn(self.mlp_hidden, dtype=self.dtype, name="mlp")(y)
        return x + LayerScale(name="ls2")(y)


class DinoViT(nn.Module):
    """DINOv2 ViT; `cfg` is an encoder ConfigDict (docs/conventions.md)."""
    cfg: ml_collections.ConfigDict
    backend: Backend = LAX

    @nn.compact
    def __call__(self, images: jax.Array) -> ViTOutput:
        """`images (B, H, W, 3)` ImageNet-normalised, `H, W` multiples of the patch size."""
        cfg = self.cfg
        p, d, m, r = cfg.patch_size, cfg.embed_dim, cfg.pos_grid, cfg.num_registers
        dtype = jnp.dtype(cfg.dtype)
        b, hh, ww, _ = images.shape
        if hh % p or ww % p:
            raise ValueError(f"image size {(hh, ww)} must be a multiple of the patch size {p}")
        h, w = hh // p, ww // p
        taps = tuple(cfg.taps)
        if any(not 0 <= t < cfg.depth for t in taps):
            raise ValueError(f"taps {taps} out of range for depth {cfg.depth}")

        x = PatchEmbed(embed_dim=d, patch_size=p, dtype=dtype, backend=self.backend,
                       name="patch_embed")(images).reshape(b, h * w, d)
        init = nn.initializers.normal
        cls = self.param("cls_token", init(1e-6), (1, 1, d), jnp.float32)
        pos = self.param("pos_embed", init(0.02), (1, 1 + m * m, d), jnp.float32)
        self.param("mask_token", nn.initializers.zeros, (1, d), jnp.float32)
        patch_pos = resize_pos_embed(pos[0, 1:].reshape(m, m, d), (h, w), cfg.pos_embed_mode)
        x = jnp.concatenate([jnp.broadcast_to(cls + pos[:, :1], (b, 1, d)).astype(dtype),
                             x + patch_pos.reshape(1, h * w, d).astype(dtype)], axis=1)
        if r:
            regs = self.param("register_tokens", init(1e-6), (1, r, d), jnp.float32)
            x = jnp.concatenate([x[:, :1], jnp.broadcast_to(regs, (b, r, d)).astype(dtype),
                                 x[:, 1:]], axis=1)

        hidden = (swiglu_hidden(d, cfg.mlp_ratio) if cfg.ffn == "swiglu"
                  else int(d * cfg.mlp_ratio))
        norm = _layer_norm("norm", dtype)
        tapped = {}
        for i in range(cfg.depth):
            block = Block(num_heads=cfg.num_heads, mlp_hidden=hidden, ffn=cfg.ffn,
                          attention_impl=cfg.attention_impl, dtype=dtype, name=f"blocks_{i}")
            x = deferred_remat(block, x) if cfg.remat else block(x)
            if i in taps:
                tapped[i] = norm(x)
        return ViTOutput(tuple(tapped[t][:, 1 + r:].reshape(b, h, w, d) for t in taps),
                         tuple(tapped[t][:, 0] for t in taps), norm(x))
