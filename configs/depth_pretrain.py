"""Stage A: depth pretraining of the encoder + DPT depth branch (Depth Anything V2 layout).

    python -m radblur_jax.main --config configs/depth_pretrain.py:s --workdir /tmp/stage_a \
        --config.init.pretrained=/weights/depth_anything_v2_vits

Loss: scale-and-shift-invariant disparity + multi-scale gradient matching; validation reports
AbsRel and delta1. With no dataset given it trains on the built-in synthetic set's sharp images
and true depth. The argument picks the model preset (tiny | s | b | l | g).
"""
from __future__ import annotations

import ml_collections

from radblur_jax.train.config_base import base_config, set_preset_fields

# preset: (global batch, crop (a multiple of 14), steps, lr, fsdp, remat, compute dtype)
_PRESETS = {
    "tiny": (4, 56, 300, 1e-3, 1, False, "float32"),
    "s": (16, 266, 50_000, 5e-6, 1, False, "bfloat16"),
    "b": (16, 266, 50_000, 5e-6, 1, True, "bfloat16"),
    "l": (32, 518, 80_000, 5e-6, 8, True, "bfloat16"),
    "g": (64, 518, 80_000, 5e-6, 16, True, "bfloat16"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-A config for the model preset `arg` (default s)."""
    name = arg or "s"
    if name not in _PRESETS:
        raise ValueError(f"configs/depth_pretrain.py: unknown preset {name!r}; "
                         f"expected one of {sorted(_PRESETS)}")
    c = base_config("depth", name)
    set_preset_fields(c, _PRESETS[name], tiny=name == "tiny", data_name="synthetic_depth",
                      eval_every_tiny=100, warmup_tiny=30)
    c.loss = ml_collections.ConfigDict(dict(grad_weight=0.5, scales=4))
    c.eval.crop = 0
    return c
