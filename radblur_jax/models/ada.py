"""Adaptive depth attention (ADA): gated fusion of depth-branch features into the blur stream.

A gate computed from both streams decides, per pixel and channel, how much projected
depth feature enters the blur stream; a per-channel output scale initialised at zero makes the
network start as a plain reversible deblurrer. In the reversible decoder ADA acts on the coupling
input `z = Up(c_{k-1}') + Down(c_{k+1})`, a quantity known when the coupling is inverted (see
docs/architecture.md, "Invertibility").
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models.backends import LAX, Backend


class AdaptiveDepthAttention(nn.Module):
    """`z + scale * sigmoid(W_g [LN(z), d]) * W_v d`, per pixel and channel.

    Args of `__call__`: `z (B, h, w, C)` blur-stream features, `depth (B, h, w, C)` depth
    features already projected to `C` channels. Returns `(B, h, w, C)` in `dtype`.
    Params (float32): `norm`, `gate` (1x1 conv, 2C -> C), `value` (1x1 conv, C -> C),
    `scale (C,)` zeros. The norm and the sigmoid run in float32, the convs in `dtype`.
    """
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, z: jax.Array, depth: jax.Array) -> jax.Array:
        channels = z.shape[-1]
        if depth.shape != z.shape:
            raise ValueError(f"ADA: depth features {depth.shape} must match blur features "
                             f"{z.shape}")
        conv = self.backend.conv
        zn = self.backend.norm(name="norm")(z).astype(self.dtype)
        depth = depth.astype(self.dtype)
        gate = conv(channels, (1, 1), dtype=self.dtype, name="gate")((zn, depth))  # [LN(z), d]
        gate = nn.sigmoid(gate.astype(jnp.float32)).astype(self.dtype)
        value = conv(channels, (1, 1), dtype=self.dtype, name="value")(depth)
        scale = self.param("scale", nn.initializers.zeros, (channels,), jnp.float32)
        return z.astype(self.dtype) + scale.astype(self.dtype) * gate * value
