"""Evaluation of a trained RADBlur on a benchmark split with its official protocol.

    python -m radblur_jax.main --config configs/eval.py --workdir TRAIN_WORKDIR
    python -m radblur_jax.main --config configs/eval.py:s --workdir DIR \
        --config.data.name=gopro --config.data.root=/data/GOPRO_Large --config.data.split=test
    python -m radblur_jax.main --config configs/eval.py:tiny --workdir /tmp/ev \
        --config.random_init=True          # smoke run: random weights, built-in synthetic set

The argument is the model preset (used with `random_init`; a checkpoint brings its own model
config). Reports go to `output_dir` (default WORKDIR/eval/<dataset>_<split>); see
docs/evaluation.md.
"""
from __future__ import annotations

import ml_collections

from radblur_jax.data.sources import dataset_spec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Eval config; `arg` = model preset (default tiny)."""
    c = ml_collections.ConfigDict()
    c.stage = "eval"
    c.model = arg or "tiny"
    # Weights: a training workdir or checkpoint step dir; empty = the --workdir itself.
    c.checkpoint = ""
    c.use_ema = True
    c.random_init = False          # smoke runs only: random weights for `model`
    c.seed = 0
    c.compute_dtype = ""           # "" = as saved with the checkpoint; float32 | bfloat16 | float16
    # Dataset spec as radblur_jax.data.sources.make_source takes it, every dataset option
    # declared (--config.data.subset=saturation); empty root of the synthetic set = the
    # built-in set (generated on first use).
    c.data = ml_collections.ConfigDict(dataset_spec("synthetic", split="test"))
    # "" = the dataset's own: realblur_j/realblur_r -> realblur, rsblur -> rsblur, others gopro.
    # gopro | realblur | rsblur; one that contradicts a benchmark's own is an error.
    c.protocol = ""
    c.ssim_mode = "3d"             # gopro protocol: "3d" (papers' tables) | "per_channel"
    c.tile = 0                     # sliding-window side in px; 0 = whole image
    c.overlap = 32                 # px shared by neighbouring windows
    c.tile_batch = 4               # windows per forward pass
    c.self_ensemble = False        # x8 flips/rotations
    c.num_active = 0               # sub-decoders to run; 0 = all
    # Adaptive exit: each image (each window with `tile`) runs only the sub-decoders its exit
    # head asks for; the report then also gives PSNR/SSIM and time with all of them.
    c.adaptive = False
    c.batch_size = 1               # images per step (same-size images), split over devices
    c.max_images = 0               # 0 = the whole split
    c.save_images = True           # restored/<name>.png
    c.grids = True                 # comparison_{best,median,worst}.png
    c.output_dir = ""
    return c
