"""Depth Anything V2: DINOv2 encoder (`pretrained/`) + DPT depth branch (`depth_head/`).

`build_depth_anything(cfg)` is the stage-A depth model of a RADBlur config (the tree RADBlur keeps
under `params["depth"]`), its backend resolved from `cfg.conv_impl`.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.models.backends import LAX, Backend, resolve_backend
from radblur_jax.models.dpt import DPTHead
from radblur_jax.models.vit import DinoViT

# The RGB normalisation DINOv2 and Depth Anything were trained with (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DepthOutput(NamedTuple):
    """disparity `(B, H, W)` float32 (relative: >= 0; metric: depth in [0, max_depth]);
    features `(path_4, path_3, path_2, path_1)`, `(B, h * 2**i, w * 2**i, F)`, or None;
    tokens `(B, h, w, D)`: the last tap's normed patch tokens; `h, w = H / p, W / p` (patch p)."""
    disparity: jax.Array
    features: tuple | None
    tokens: jax.Array


class DepthAnything(nn.Module):
    """`DepthAnything(encoder_cfg, dpt_cfg)`; configs from `configs` (docs/conventions.md).
    Convolutions come from `backend` (models/backends.py)."""
    encoder_cfg: ml_collections.ConfigDict
    dpt_cfg: ml_collections.ConfigDict
    backend: Backend = LAX

    @nn.compact
    def __call__(self, images: jax.Array, return_features: bool = True) -> DepthOutput:
        """`images (B, H, W, 3)` ImageNet-normalised, `H, W` multiples of the patch size."""
        if len(self.encoder_cfg.taps) != 4:
            raise ValueError(f"Depth Anything needs 4 encoder taps, got {self.encoder_cfg.taps}")
        enc = DinoViT(self.encoder_cfg, self.backend, name="pretrained")(images)
        head = DPTHead(cfg=self.dpt_cfg, dtype=jnp.dtype(self.encoder_cfg.dtype),
                       patch_size=int(self.encoder_cfg.patch_size), backend=self.backend,
                       name="depth_head")
        depth, feats = head(enc.taps)
        return DepthOutput(depth, feats if return_features else None, enc.taps[-1])


def build_depth_anything(cfg: ml_collections.ConfigDict) -> DepthAnything:
    """The Depth Anything V2 model of a RADBlur config (`cfg.encoder`, `cfg.dpt`), computed with
    the backend of `cfg.conv_impl`."""
    return DepthAnything(cfg.encoder, cfg.dpt, resolve_backend(cfg.conv_impl))
