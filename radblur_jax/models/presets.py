"""Model configuration presets: DINOv2 encoders and Depth Anything V2 DPT heads.

Each function returns a fresh `ml_collections.ConfigDict`; see docs/conventions.md for fields.
"""
from __future__ import annotations

import ml_collections

# name: (embed_dim, depth, num_heads, ffn, taps used by Depth Anything V2)
_VIT = {
    "tiny": (64, 4, 4, "mlp", (0, 1, 2, 3)),
    "vits": (384, 12, 6, "mlp", (2, 5, 8, 11)),
    "vitb": (768, 12, 12, "mlp", (2, 5, 8, 11)),
    "vitl": (1024, 24, 16, "mlp", (4, 11, 17, 23)),
    "vitg": (1536, 40, 24, "swiglu", (9, 19, 29, 39)),
}

# name: (features, out_channels)
_DPT = {
    "tiny": (16, (16, 32, 64, 64)),
    "vits": (64, (48, 96, 192, 384)),
    "vitb": (128, (96, 192, 384, 768)),
    "vitl": (256, (256, 512, 1024, 1024)),
    "vitg": (384, (1536, 1536, 1536, 1536)),
}


def encoder_config(name: str, *, num_registers: int = 0, pos_grid: int = 37,
                   pos_embed_mode: str = "offset") -> ml_collections.ConfigDict:
    """DINOv2 ViT config for `name` in {tiny, vits, vitb, vitl, vitg}."""
    if name not in _VIT:
        raise ValueError(f"unknown encoder preset {name!r}; expected one of {sorted(_VIT)}")
    embed_dim, depth, num_heads, ffn, taps = _VIT[name]
    return ml_collections.ConfigDict(dict(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4.0, ffn=ffn,
        num_registers=num_registers, patch_size=14, pos_grid=pos_grid,
        pos_embed_mode=pos_embed_mode, taps=taps, attention_impl="auto", remat=False,
        dtype="float32"))


def dpt_config(name: str, *, head: str = "relative", max_depth: float = 20.0
               ) -> ml_collections.ConfigDict:
    """Depth Anything V2 DPT neck/head config matching encoder preset `name`."""
    if name not in _DPT:
        raise ValueError(f"unknown DPT preset {name!r}; expected one of {sorted(_DPT)}")
    features, out_channels = _DPT[name]
    return ml_collections.ConfigDict(dict(
        features=features, out_channels=out_channels, head=head, max_depth=max_depth))
