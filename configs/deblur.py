"""Stage B: deblur fine-tuning of RADBlur (encoder + depth branch + reversible decoder).

    python -m radblur_jax.main --config configs/deblur.py:tiny --workdir /tmp/radblur_tiny
    python -m radblur_jax.main --config configs/deblur.py:s --workdir runs/deblur_s \
        --config.data.name=gopro --config.data.root=/data/GOPRO_Large \
        --config.init.checkpoint=runs/stage_a

The argument picks the model preset (tiny | s | b | l | g); with no dataset given, training
runs on the built-in synthetic set (generated on first use). Field meanings:
radblur_jax/train/config_base.py.
"""
from __future__ import annotations

import ml_collections

from radblur_jax.train.config_base import base_config, set_preset_fields

# preset: (global batch, crop, steps, lr, fsdp, remat, compute dtype)
_PRESETS = {
    "tiny": (4, 64, 1300, 1e-3, 1, False, "float32"),
    "s": (16, 256, 200_000, 2e-4, 1, False, "bfloat16"),
    "b": (16, 256, 200_000, 2e-4, 1, True, "bfloat16"),
    "l": (32, 256, 300_000, 1e-4, 8, True, "bfloat16"),
    "g": (64, 256, 300_000, 1e-4, 16, True, "bfloat16"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Stage-B config for the model preset `arg` (default tiny)."""
    name = arg or "tiny"
    if name not in _PRESETS:
        raise ValueError(f"configs/deblur.py: unknown preset {name!r}; "
                         f"expected one of {sorted(_PRESETS)}")
    c = base_config("deblur", name)
    set_preset_fields(c, _PRESETS[name], tiny=name == "tiny", data_name="synthetic",
                      eval_every_tiny=650, warmup_tiny=50)
    # The main phase leaves the exit head alone; it is trained afterwards in its own phase.
    c.optimizer.freeze = ["^exit_head/"]
    c.loss = ml_collections.ConfigDict(dict(
        pixel="l1",            # "l1" | "psnr"
        fft_weight=0.01,
        distill_weight=0.0,    # > 0: keep the depth prediction on the sharp image close to the
                               # frozen initial (stage-A) model's
    ))
    # Exit-head phase: after train.num_steps, exit.steps more steps train only the exit head
    # (blur-degree classes from the blurry/sharp PSNR) with its own Adam.
    c.exit = ml_collections.ConfigDict(dict(steps=50 if name == "tiny" else 2000, lr=1e-3))
    c.eval.num_images = 0
    c.eval.crop = 128 if name == "tiny" else 0
    return c
