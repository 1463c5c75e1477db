"""Depth Anything V2 DPT neck and head (Linen), NHWC, parameter paths as the original keys.

`DPTHead(cfg=cfg, patch_size=p)` maps four ViT taps `(B, h, w, D)` to a depth map
`(B, p*h, p*w)` and the fusion features `(path_4, path_3, path_2, path_1)`, coarse to fine,
`(B, h * 2**i, w * 2**i, features)`. The cls token is not used (Depth Anything V2 runs with
`use_clstoken=False`). Convolutions come from `backend` (models/backends.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.models import layers
from radblur_jax.models.backends import LAX, Backend
from radblur_jax.models.configs import PATCH_SIZE

HEAD_HIDDEN = 32


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input (`resConfUnit{1,2}`)."""
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f, dt, conv = x.shape[-1], self.dtype, self.backend.conv
        y = conv(f, (3, 3), padding=1, dtype=dt, name="conv1")(nn.relu(x))
        y = conv(f, (3, 3), padding=1, dtype=dt, name="conv2")(nn.relu(y))
        return y + x


class FeatureFusionBlock(nn.Module):
    """`x (+ rcu1(skip))` -> rcu2 -> align-corners bilinear resize -> 1x1 `out_conv`.

    Resizes to `size`, or doubles the size when `size` is None. Without `skip` (refinenet4) the
    `resConfUnit1` parameters are not created.
    """
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None,
                 size: Sequence[int] | None = None) -> jax.Array:
        dt, backend = self.dtype, self.backend
        if skip is not None:
            x = x + ResidualConvUnit(dt, backend, name="resConfUnit1")(skip)
        x = ResidualConvUnit(dt, backend, name="resConfUnit2")(x)
        size = tuple(size) if size is not None else (2 * x.shape[1], 2 * x.shape[2])
        x = layers.bilinear_resize(x, size, align_corners=True)
        return backend.conv(x.shape[-1], (1, 1), dtype=dt, name="out_conv")(x)


class Scratch(nn.Module, kw_only=True):
    """Channel reduction (`layer{i}_rn`), coarse-to-fine fusion and output convolutions."""
    features: int
    head: str = "relative"
    max_depth: float = 20.0
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], out_hw: tuple[int, int]) -> tuple:
        f, dt, conv = self.features, self.dtype, self.backend.conv
        fusion = lambda name: FeatureFusionBlock(dt, self.backend, name=name)
        l1, l2, l3, l4 = (conv(f, (3, 3), padding=1, use_bias=False, dtype=dt,
                               name=f"layer{i + 1}_rn")(x) for i, x in enumerate(feats))
        p4 = fusion("refinenet4")(l4, size=l3.shape[1:3])
        p3 = fusion("refinenet3")(p4, l3, size=l2.shape[1:3])
        p2 = fusion("refinenet2")(p3, l2, size=l1.shape[1:3])
        p1 = fusion("refinenet1")(p2, l1)
        y = conv(f // 2, (3, 3), padding=1, dtype=dt, name="output_conv1")(p1)
        y = layers.bilinear_resize(y, out_hw, align_corners=True)
        y = nn.relu(conv(HEAD_HIDDEN, (3, 3), padding=1, dtype=dt, name="output_conv2_0")(y))
        y = conv(1, (1, 1), dtype=dt, name="output_conv2_2")(y)
        y = y[..., 0].astype(jnp.float32)
        if self.head == "relative":
            depth = nn.relu(y)
        elif self.head == "metric":
            depth = nn.sigmoid(y) * self.max_depth
        else:
            raise ValueError(f"unknown DPT head {self.head!r}; expected relative or metric")
        return depth, (p4, p3, p2, p1)


class DPTHead(nn.Module, kw_only=True):
    """DPT neck + head; `cfg` is a dpt ConfigDict (features, out_channels, head, max_depth)."""
    cfg: ml_collections.ConfigDict
    dtype: jnp.dtype = jnp.float32
    patch_size: int = PATCH_SIZE
    backend: Backend = LAX

    @nn.compact
    def __call__(self, taps: Sequence[jax.Array]) -> tuple[jax.Array, tuple]:
        """`taps`: 4 x `(B, h, w, D)` -> (`depth (B, p*h, p*w)` float32, 4 fusion maps),
        `p = patch_size` (the encoder's)."""
        if len(taps) != 4:
            raise ValueError(f"DPTHead needs 4 taps, got {len(taps)}")
        oc, dt, conv = tuple(self.cfg.out_channels), self.dtype, self.backend.conv
        _, h, w, _ = taps[0].shape
        feats = []
        for i, x in enumerate(taps):
            x = conv(oc[i], (1, 1), dtype=dt, name=f"projects_{i}")(x.astype(dt))
            if i in (0, 1):  # transposed convs with kernel == stride (4, 2)
                k = 4 if i == 0 else 2
                x = self.backend.conv_transpose(oc[i], k, k, dtype=dt,
                                                name=f"resize_layers_{i}")(x)
            elif i == 3:
                x = conv(oc[3], (3, 3), strides=2, padding=1, dtype=dt, name="resize_layers_3")(x)
            feats.append(x)
        scratch = Scratch(features=self.cfg.features, head=self.cfg.head,
                          max_depth=float(self.cfg.max_depth), dtype=dt, backend=self.backend,
                          name="scratch")
        return scratch(feats, (h * self.patch_size, w * self.patch_size))
