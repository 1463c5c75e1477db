"""Depth Anything V2 DPT neck and head (Linen), NHWC, parameter paths as the original keys.

`DPTHead(cfg, patch_size=p)` maps four ViT taps `(B, h, w, D)` to a depth map `(B, p*h, p*w)`
and the fusion
features `(path_4, path_3, path_2, path_1)`, coarse to fine, `(B, h * 2**i, w * 2**i, features)`.
The cls token is not used (Depth Anything V2 runs with `use_clstoken=False`).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.models import conv_ops, layers
from radblur_jax.models.configs import PATCH_SIZE

HEAD_HIDDEN = 32


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input (`resConfUnit{1,2}`)."""
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        f, dt, impl = x.shape[-1], self.dtype, self.conv_impl
        y = conv_ops.conv(f, 3, 1, 1, dtype=dt, impl=impl, name="conv1")(nn.relu(x))
        y = conv_ops.conv(f, 3, 1, 1, dtype=dt, impl=impl, name="conv2")(nn.relu(y))
        return y + x


class FeatureFusionBlock(nn.Module):
    """`x (+ rcu1(skip))` -> rcu2 -> align-corners bilinear resize -> 1x1 `out_conv`.

    Resizes to `size`, or doubles the size when `size` is None. Without `skip` (refinenet4) the
    `resConfUnit1` parameters are not created.
    """
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array | None = None,
                 size: Sequence[int] | None = None) -> jax.Array:
        dt, impl = self.dtype, self.conv_impl
        if skip is not None:
            x = x + ResidualConvUnit(dt, impl, name="resConfUnit1")(skip)
        x = ResidualConvUnit(dt, impl, name="resConfUnit2")(x)
        size = tuple(size) if size is not None else (2 * x.shape[1], 2 * x.shape[2])
        x = layers.bilinear_resize(x, size, align_corners=True)
        return conv_ops.conv(x.shape[-1], 1, dtype=dt, impl=impl, name="out_conv")(x)


class Scratch(nn.Module):
    """Channel reduction (`layer{i}_rn`), coarse-to-fine fusion and output convolutions."""
    features: int
    head: str = "relative"
    max_depth: float = 20.0
    dtype: jnp.dtype = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, feats: Sequence[jax.Array], out_hw: tuple[int, int]) -> tuple:
        f, dt, impl = self.features, self.dtype, self.conv_impl
        l1, l2, l3, l4 = (conv_ops.conv(f, 3, 1, 1, use_bias=False, dtype=dt, impl=impl,
                                        name=f"layer{i + 1}_rn")(x) for i, x in enumerate(feats))
        p4 = FeatureFusionBlock(dt, impl, name="refinenet4")(l4, size=l3.shape[1:3])
        p3 = FeatureFusionBlock(dt, impl, name="refinenet3")(p4, l3, size=l2.shape[1:3])
        p2 = FeatureFusionBlock(dt, impl, name="refinenet2")(p3, l2, size=l1.shape[1:3])
        p1 = FeatureFusionBlock(dt, impl, name="refinenet1")(p2, l1)
        y = conv_ops.conv(f // 2, 3, 1, 1, dtype=dt, impl=impl, name="output_conv1")(p1)
        y = layers.bilinear_resize(y, out_hw, align_corners=True)
        y = nn.relu(conv_ops.conv(HEAD_HIDDEN, 3, 1, 1, dtype=dt, impl=impl,
                                  name="output_conv2_0")(y))
        y = conv_ops.conv(1, 1, dtype=dt, impl=impl, name="output_conv2_2")(y)
        y = y[..., 0].astype(jnp.float32)
        if self.head == "relative":
            depth = nn.relu(y)
        elif self.head == "metric":
            depth = nn.sigmoid(y) * self.max_depth
        else:
            raise ValueError(f"unknown DPT head {self.head!r}; expected relative or metric")
        return depth, (p4, p3, p2, p1)


class DPTHead(nn.Module):
    """DPT neck + head; `cfg` is a dpt ConfigDict (features, out_channels, head, max_depth,
    conv_impl)."""
    cfg: ml_collections.ConfigDict
    dtype: jnp.dtype = jnp.float32
    patch_size: int = PATCH_SIZE

    @nn.compact
    def __call__(self, taps: Sequence[jax.Array]) -> tuple[jax.Array, tuple]:
        """`taps`: 4 x `(B, h, w, D)` -> (`depth (B, p*h, p*w)` float32, 4 fusion maps),
        `p = patch_size` (the encoder's)."""
        if len(taps) != 4:
            raise ValueError(f"DPTHead needs 4 taps, got {len(taps)}")
        oc, dt = tuple(self.cfg.out_channels), self.dtype
        impl = self.cfg.get("conv_impl", "auto")
        _, h, w, _ = taps[0].shape
        feats = []
        for i, x in enumerate(taps):
            x = conv_ops.conv(oc[i], 1, dtype=dt, impl=impl, name=f"projects_{i}")(x.astype(dt))
            if i in (0, 1):  # transposed convs with kernel == stride (4, 2)
                k = 4 if i == 0 else 2
                x = conv_ops.ConvTranspose(oc[i], k, k, dtype=dt, impl=impl,
                                           name=f"resize_layers_{i}")(x)
            elif i == 3:
                x = conv_ops.conv(oc[3], 3, 2, 1, dtype=dt, impl=impl, name="resize_layers_3")(x)
            feats.append(x)
        scratch = Scratch(self.cfg.features, self.cfg.head, float(self.cfg.max_depth), dt, impl,
                          name="scratch")
        return scratch(feats, (h * self.patch_size, w * self.patch_size))
