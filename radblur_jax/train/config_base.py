"""The fields every training config shares; `configs/*.py` start from `base_config(stage)`.

Contract (tests and scripts rely on these names):
  stage                       "depth" | "deblur" | "eval"
  model                       preset name (tiny | s | b | l | g)
  model_overrides             nested fields merged into the preset (e.g. `decoder.fft=False`)
  compute_dtype, remat        activations dtype ("float32" | "bfloat16"); rematerialise ViT blocks
  seed
  data, eval_data             dataset specs as `radblur_jax.data.sources.make_source` takes them;
                              `root=""` with name synthetic / synthetic_depth = the built-in set
                              (generated on first use)
  input                       crop_size, worker_count, read_threads (training pipeline)
  train                       num_steps, batch_size (global), log_every, checkpoint_every,
                              eval_every, ema_decay, split_step ("auto" | "on" | "off": the
                              step as two programs compiled concurrently; auto = CPU only)
  optimizer                   read by `radblur_jax.train.optimizer.make_optimizer`
  mesh                        data, fsdp (-1 = all remaining devices), batch_axes
  sharding                    rules ((regex, spec) pairs, first match wins), min_fsdp_size
  checkpoint                  keep, keep_best, async_save
  eval                        num_images (0 = all), batch_size, crop (0 = full image),
                              grid_images (validation PNG grids), use_ema
  init                        checkpoint (a stage-A workdir or step dir), pretrained (converted
                              Depth Anything V2 / DINOv2 directory); "" = random
"""
from __future__ import annotations

import ml_collections

from radblur_jax.train.optimizer import default_optimizer_config

STAGES = ("depth", "deblur", "eval")


def base_config(stage: str, model: str) -> ml_collections.ConfigDict:
    """Defaults shared by both training stages (a fresh ConfigDict)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; expected one of {STAGES}")
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.model = model
    c.model_overrides = ml_collections.ConfigDict()
    c.compute_dtype = "float32"
    c.remat = False
    c.seed = 0

    c.data = ml_collections.ConfigDict(dict(name="synthetic", root="", split="train"))
    c.eval_data = ml_collections.ConfigDict(dict(name="synthetic", root="", split="test"))
    c.input = ml_collections.ConfigDict(dict(crop_size=256, worker_count=0, read_threads=2))

    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000, batch_size=16, log_every=50, checkpoint_every=500, eval_every=500,
        ema_decay=0.999, split_step="auto"))
    c.optimizer = default_optimizer_config()

    # Batches are split over both axes: FSDP devices are data-parallel too; only parameters
    # and optimiser state differ between the axes (sharded over fsdp, replicated over data).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, batch_axes=("data", "fsdp")))
    c.sharding = ml_collections.ConfigDict(dict(
        # (regex on the "/"-joined state path, spec); spec "fsdp" = the largest axis divisible
        # by the fsdp size, "replicated", or a tuple of mesh axis names / None per dimension.
        rules=(
            (r"(pos_embed|cls_token|register_tokens|mask_token)$", "replicated"),
            (r"(alpha|gamma|scale|bias)$", "replicated"),
            (r".*", "fsdp"),
        ),
        min_fsdp_size=2 ** 12))
    c.checkpoint = ml_collections.ConfigDict(dict(keep=3, keep_best=True, async_save=True))
    c.eval = ml_collections.ConfigDict(dict(
        num_images=0, batch_size=1, crop=0, grid_images=4, use_ema=True))
    c.init = ml_collections.ConfigDict(dict(checkpoint="", pretrained=""))
    return c


def set_preset_fields(c: ml_collections.ConfigDict, preset: tuple, *, tiny: bool,
                      data_name: str, eval_every_tiny: int, warmup_tiny: int) -> None:
    """Fills the fields both stages set per model preset, in place.

    `preset = (global batch, crop, steps, lr, fsdp, remat, compute dtype)`; `tiny` picks the
    cadence of a short CPU run (frequent logs and checkpoints, a short EMA horizon) over that of
    a long accelerator run. `data_name` is the built-in dataset used when none is given.
    """
    batch, crop, steps, lr, fsdp, remat, dtype = preset
    c.compute_dtype, c.remat = dtype, remat
    c.data = ml_collections.ConfigDict(dict(name=data_name, root="", split="train"))
    c.eval_data = ml_collections.ConfigDict(dict(name=data_name, root="", split="test"))
    c.input.crop_size = crop
    c.train.num_steps, c.train.batch_size = steps, batch
    # EMA horizon ~1/(1-decay) steps: short runs need a short one, or the EMA stays near init.
    c.train.ema_decay = 0.99 if tiny else 0.999
    c.train.log_every = 10 if tiny else 100
    c.train.checkpoint_every = 100 if tiny else 5000
    c.train.eval_every = eval_every_tiny if tiny else 5000
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = warmup_tiny if tiny else 1000
    # Layer-wise lr decay suits a pretrained encoder; tiny starts from random weights.
    c.optimizer.layer_decay = 1.0 if tiny else 0.9
    c.mesh.fsdp = fsdp
