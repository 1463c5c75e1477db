"""Stage B: deblur fine-tuning of RADBlur (encoder + depth branch + reversible decoder).

    python -m radblur_jax.main --config configs/deblur.py:tiny --workdir /tmp/radblur_tiny
    python -m radblur_jax.main --config configs/deblur.py:s --workdir runs/deblur_s \
        --config.data.name=gopro --config.data.root=/data/GOPRO_Large \
        --config.init.checkpoint=runs/stage_a
    python -m radblur_jax.main --config configs/deblur.py:tiny,num_steps=300,eval_every=100 ...

The argument picks the model preset (tiny | s | b | l | g; default tiny) and may change fields
of its recipe (`DeblurRecipe`). With no dataset given, training runs on the built-in synthetic
set (generated on first use). Field meanings: radblur_jax/train/config_base.py.
"""
# No `from __future__ import annotations`: config files are loaded outside sys.modules,
# where dataclasses cannot resolve string annotations.
import dataclasses

import ml_collections

from radblur_jax.train.config_base import Recipe, parse_arg, training_config


@dataclasses.dataclass(frozen=True)
class DeblurRecipe(Recipe):
    exit_steps: int = 2000   # exit-head phase after the main one; 0 = none
    eval_crop: int = 0       # validation centre crop side, px; 0 = full images
    stem_remat: bool = False  # rematerialise the blur stem's blocks (model.decoder.stem_remat)


_TINY = dict(log_every=10, checkpoint_every=100, ema_decay=0.99, layer_decay=1.0,
             compute_dtype="float32")
RECIPES = {
    "tiny": DeblurRecipe(batch_size=4, crop_size=64, num_steps=1300, lr=1e-3, warmup_steps=50,
                         eval_every=650, exit_steps=50, eval_crop=128, **_TINY),
    "s": DeblurRecipe(batch_size=16, crop_size=256, num_steps=200_000, lr=2e-4,
                      warmup_steps=1000, eval_every=5000),
    "b": DeblurRecipe(batch_size=16, crop_size=256, num_steps=200_000, lr=2e-4,
                      warmup_steps=1000, eval_every=5000, remat=True, stem_remat=True),
    "l": DeblurRecipe(batch_size=32, crop_size=256, num_steps=300_000, lr=1e-4,
                      warmup_steps=1000, eval_every=5000, fsdp=8, remat=True,
                      stem_remat=True),
    "g": DeblurRecipe(batch_size=64, crop_size=256, num_steps=300_000, lr=1e-4,
                      warmup_steps=1000, eval_every=5000, fsdp=16, remat=True,
                      stem_remat=True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-B config for `arg` = `PRESET[,FIELD=VALUE...]` (default tiny)."""
    name, recipe = parse_arg(arg, RECIPES, "configs/deblur.py")
    c = training_config("deblur", name, recipe, dataset="synthetic")
    # Where memory is tight (b, l, g) the stem's activations are recomputed in the backward
    # as well as the ViT's: for `b` they free more memory than the ViT's remat for a quarter
    # of its extra FLOPs (docs/benchmarks.md, train_step.py --remat).
    c.model.decoder.stem_remat = recipe.stem_remat
    # The main phase leaves the exit head alone; it is trained afterwards in its own phase.
    c.optimizer.freeze = ("^exit_head/",)
    c.loss = ml_collections.ConfigDict(dict(
        pixel="l1",            # "l1" | "psnr"
        fft_weight=0.01,
        distill_weight=0.0,    # > 0: keep the depth prediction on the sharp image close to the
                               # frozen initial (stage-A) model's
    ))
    # Exit-head phase: after train.num_steps, exit.steps more steps train only the exit head
    # (blur-degree classes from the blurry/sharp PSNR) with its own Adam.
    c.exit = ml_collections.ConfigDict(dict(steps=recipe.exit_steps, lr=1e-3))
    c.eval.num_images = 0
    c.eval.crop = recipe.eval_crop
    return c
