"""Stage A: depth pretraining of the encoder + DPT depth branch (Depth Anything V2 layout).

    python -m radblur_jax.main --config configs/depth_pretrain.py:s --workdir /tmp/stage_a \
        --config.init.pretrained=/weights/depth_anything_v2_vits

Loss: scale-and-shift-invariant disparity + multi-scale gradient matching; validation reports
AbsRel and delta1. With no dataset given it trains on the built-in synthetic set's sharp images
and true depth. The argument picks the model preset (tiny | s | b | l | g).
"""
from __future__ import annotations

import ml_collections

from radblur_jax.train.config_base import base_config

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
    batch, crop, steps, lr, fsdp, remat, dtype = _PRESETS[name]
    c = base_config("depth", name)
    c.compute_dtype, c.remat = dtype, remat
    c.data = ml_collections.ConfigDict(dict(name="synthetic_depth", root="", split="train"))
    c.eval_data = ml_collections.ConfigDict(dict(name="synthetic_depth", root="", split="test"))
    c.input.crop_size = crop
    c.train.num_steps, c.train.batch_size = steps, batch
    # EMA horizon ~1/(1-decay) steps: short runs need a short one, or the EMA stays near init.
    c.train.ema_decay = 0.99 if name == "tiny" else 0.999
    c.train.log_every = 10 if name == "tiny" else 100
    c.train.checkpoint_every = 100 if name == "tiny" else 5000
    c.train.eval_every = 100 if name == "tiny" else 5000
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = 30 if name == "tiny" else 1000
    # Layer-wise lr decay suits a pretrained encoder; tiny starts from random weights.
    c.optimizer.layer_decay = 1.0 if name == "tiny" else 0.9
    c.mesh.fsdp = fsdp
    c.loss = ml_collections.ConfigDict(dict(grad_weight=0.5, scales=4))
    c.eval.crop = 0
    return c
