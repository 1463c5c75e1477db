"""Stage A: depth pretraining of the encoder + DPT depth branch (Depth Anything V2 layout).

    python -m radblur_jax.main --config configs/depth_pretrain.py:tiny --workdir /tmp/stage_a
    python -m radblur_jax.main --config configs/depth_pretrain.py:s --workdir /tmp/stage_a \
        --config.init.pretrained=/weights/depth_anything_v2_vits

Loss: scale-and-shift-invariant disparity + multi-scale gradient matching (weighted by the
recipe's `grad_weight`); validation reports AbsRel and delta1. With no dataset given it trains
on the built-in synthetic set's sharp images and true depth. The argument picks the model
preset (tiny | s | b | l | g; default tiny) and may change fields of its recipe
(`configs/depth_pretrain.py:s,num_steps=1000`). Crops are multiples of the ViT patch (14).
"""
# No `from __future__ import annotations`: config files are loaded outside sys.modules,
# where dataclasses cannot resolve string annotations.
import dataclasses

import ml_collections

from radblur_jax.train.config_base import Recipe, parse_arg, training_config


@dataclasses.dataclass(frozen=True)
class DepthRecipe(Recipe):
    # Gradient matching (MiDaS / Depth Anything weigh it 0.5) assumes an informative
    # prediction, i.e. a pretrained start. From random weights the DPT's output is noise that
    # the term scores worse than a flat prediction, so the fastest way down is to flatten: the
    # head's final ReLU clips every pixel and the branch dies with zero gradient. Recipes that
    # start from random weights (tiny) train on the scale-and-shift-invariant term alone.
    grad_weight: float = 0.5


_TINY = dict(log_every=10, checkpoint_every=100, ema_decay=0.99, layer_decay=1.0,
             compute_dtype="float32")
RECIPES = {
    # tiny: 112 px crops (8 x 8 patches); 56 px ones (4 x 4) give too little context to learn
    # anything that carries over to the full-size validation images.
    "tiny": DepthRecipe(batch_size=4, crop_size=112, num_steps=300, lr=1e-3, warmup_steps=30,
                        eval_every=100, grad_weight=0.0, **_TINY),
    # s..g: 252 px crops (18 x 18 patches) fit the built-in set's 256 px images and NYU's 480
    # rows; Depth Anything V2 itself trains at 518 (`input.crop_size=518` on larger images).
    "s": DepthRecipe(batch_size=16, crop_size=252, num_steps=50_000, lr=5e-6, warmup_steps=1000,
                     eval_every=5000),
    "b": DepthRecipe(batch_size=16, crop_size=252, num_steps=50_000, lr=5e-6, warmup_steps=1000,
                     eval_every=5000, remat=True),
    "l": DepthRecipe(batch_size=32, crop_size=252, num_steps=80_000, lr=5e-6, warmup_steps=1000,
                     eval_every=5000, fsdp=8, remat=True),
    "g": DepthRecipe(batch_size=64, crop_size=252, num_steps=80_000, lr=5e-6, warmup_steps=1000,
                     eval_every=5000, fsdp=16, remat=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-A config for `arg` = `PRESET[,FIELD=VALUE...]` (default tiny)."""
    name, recipe = parse_arg(arg, RECIPES, "configs/depth_pretrain.py")
    c = training_config("depth", name, recipe, dataset="synthetic_depth")
    c.loss = ml_collections.ConfigDict(dict(grad_weight=recipe.grad_weight, scales=4))
    c.eval.crop = 0
    return c
