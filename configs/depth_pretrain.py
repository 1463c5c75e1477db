"""Stage A: depth pretraining of the encoder + DPT depth branch (Depth Anything V2 layout).

    python -m radblur_jax.main --config configs/depth_pretrain.py:s --workdir /tmp/stage_a \
        --config.init.pretrained=/weights/depth_anything_v2_vits

Loss: scale-and-shift-invariant disparity + multi-scale gradient matching; validation reports
AbsRel and delta1. With no dataset given it trains on the built-in synthetic set's sharp images
and true depth. The argument picks the model preset (tiny | s | b | l | g; default tiny) and
may change fields of its `Recipe` (`configs/depth_pretrain.py:s,num_steps=1000`). Crops are
multiples of the ViT patch (14).
"""
from __future__ import annotations

import ml_collections

from radblur_jax.train.config_base import Recipe, parse_arg, training_config

RECIPES = {
    "tiny": Recipe(batch_size=4, crop_size=56, num_steps=300, lr=1e-3, warmup_steps=30,
                   eval_every=100, log_every=10, checkpoint_every=100, ema_decay=0.99,
                   layer_decay=1.0, compute_dtype="float32"),
    "s": Recipe(batch_size=16, crop_size=266, num_steps=50_000, lr=5e-6, warmup_steps=1000,
                eval_every=5000),
    "b": Recipe(batch_size=16, crop_size=266, num_steps=50_000, lr=5e-6, warmup_steps=1000,
                eval_every=5000, remat=True),
    "l": Recipe(batch_size=32, crop_size=518, num_steps=80_000, lr=5e-6, warmup_steps=1000,
                eval_every=5000, fsdp=8, remat=True),
    "g": Recipe(batch_size=64, crop_size=518, num_steps=80_000, lr=5e-6, warmup_steps=1000,
                eval_every=5000, fsdp=16, remat=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-A config for `arg` = `PRESET[,FIELD=VALUE...]` (default tiny)."""
    name, recipe = parse_arg(arg, RECIPES, "configs/depth_pretrain.py")
    c = training_config("depth", name, recipe, dataset="synthetic_depth")
    c.loss = ml_collections.ConfigDict(dict(grad_weight=0.5, scales=4))
    c.eval.crop = 0
    return c
