"""RADBlur model presets: encoder + DPT (from `presets`) + reversible decoder + exit head.

`radblur_config(name)` for name in {tiny, s, b, l, g} returns a fresh `ConfigDict`:

```
encoder, dpt   as in presets.encoder_config / dpt_config (docs/conventions.md)
decoder:       width (channels at full resolution), num_sub_decoders (K), stem_blocks,
               fft (FFT branch in the coupling blocks), depth_fusion ("attention" | "none"),
               reversible (custom-VJP backprop), anchor_every, dw_expand, ffn_expand, unroll
vit_input:     "pad" (reflect to a multiple of 14) | "resize" (bicubic to the nearest multiple)
exit:          psnr_edges (dB; classes = len + 1, class 0 = most blurred), hidden
```
"""
from __future__ import annotations

import ml_collections

from radblur_jax.models.presets import dpt_config, encoder_config

# name: (ViT preset, decoder width, K)
_RADBLUR = {
    "tiny": ("tiny", 16, 2),
    "s": ("vits", 32, 4),
    "b": ("vitb", 64, 4),
    "l": ("vitl", 64, 8),
    "g": ("vitg", 64, 8),
}


def radblur_names() -> tuple[str, ...]:
    """Preset names, smallest first."""
    return tuple(_RADBLUR)


def radblur_config(name: str) -> ml_collections.ConfigDict:
    """RADBlur config for `name` in {tiny, s, b, l, g}."""
    if name not in _RADBLUR:
        raise ValueError(f"unknown RADBlur preset {name!r}; expected one of {sorted(_RADBLUR)}")
    vit, width, num_sub_decoders = _RADBLUR[name]
    return ml_collections.ConfigDict(dict(
        name=name,
        encoder=encoder_config(vit),
        dpt=dpt_config(vit),
        decoder=dict(width=width, num_sub_decoders=num_sub_decoders, stem_blocks=1, fft=True,
                     depth_fusion="attention", reversible=True, anchor_every=2, dw_expand=2,
                     ffn_expand=2, unroll=False),
        vit_input="pad",
        exit=dict(psnr_edges=(20.0, 25.0, 30.0, 35.0, 40.0), hidden=128),
    ))
