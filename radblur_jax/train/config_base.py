"""The fields every training config shares, the recipe each preset fills in, and the one check.

A config file (`configs/deblur.py`, `configs/depth_pretrain.py`) holds a table of `Recipe`s, one
per model preset, and builds its config with `training_config(stage, preset, recipe, ...)`. Its
argument picks the preset and may change recipe fields the big_vision way:
`configs/deblur.py:tiny,num_steps=300,lr=5e-4` (`parse_arg`).

Contract (tests and scripts rely on these names):
  stage                       "depth" | "deblur" (radblur_jax.train.tasks.TASKS); "eval" for
                              configs/eval.py
  model                       the resolved RADBlur model config
                              (`radblur_jax.models.configs.radblur_config(preset)` with the
                              recipe's dtype and remat): what runs, override any field
                              (`--config.model.decoder.fft=False`); `model.name` = the preset
  seed
  data, eval_data             dataset specs as `radblur_jax.data.sources.make_source` takes them
                              (`dataset_spec`: name, root, split and every dataset option, e.g.
                              `--config.data.skip_bad=True`); `root=""` with name synthetic /
                              synthetic_depth = the built-in set (generated on first use)
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
plus the stage's own fields (deblur: loss, exit; depth: loss).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections

from radblur_jax.data.sources import dataset_spec
from radblur_jax.models.configs import check_choice, radblur_config, validate_config
from radblur_jax.train.optimizer import (
    LAYOUT_CHOICES,
    SCHEDULES,
    FreezePatternError,
    default_optimizer_config,
    freeze_regexes,
)

DEFAULT_PRESET = "tiny"
_INT_FIELDS = ("num_steps", "batch_size", "log_every", "checkpoint_every", "eval_every")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One preset's scale and schedule.

    The defaults suit a long accelerator run; a short CPU run (`tiny`) sets frequent logs and
    checkpoints and a short EMA horizon (~1/(1 - ema_decay) steps: a long one stays near init).
    Layer-wise lr decay (`layer_decay` < 1) suits a pretrained encoder, 1.0 random weights.
    """
    batch_size: int          # global
    crop_size: int           # training crop side, px
    num_steps: int
    lr: float
    warmup_steps: int
    eval_every: int          # validation cadence (also at the end of each phase); 0 = off
    log_every: int = 100
    checkpoint_every: int = 5000
    ema_decay: float = 0.999
    layer_decay: float = 0.9
    fsdp: int = 1            # mesh.fsdp: devices a parameter is sharded over
    remat: bool = False      # rematerialise the ViT blocks (model.encoder.remat)
    compute_dtype: str = "bfloat16"  # model.dtype


def _parse_value(text: str, like: Any, where: str) -> Any:
    if isinstance(like, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{where}: {text!r} is not a boolean")
    try:
        return type(like)(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r}: expected {type(like).__name__}") from None


def parse_arg(arg: str | None, recipes: dict[str, Recipe], where: str
              ) -> tuple[str, Recipe]:
    """`"s,num_steps=300,lr=1e-4"` -> `("s", the s recipe with those fields)`.

    The preset comes first and defaults to `DEFAULT_PRESET`; `key=value` options name `Recipe`
    fields. ValueError names `where` (the config file) and the bad part.
    """
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    name = parts.pop(0) if parts and "=" not in parts[0] else DEFAULT_PRESET
    if name not in recipes:
        raise ValueError(f"{where}: unknown preset {name!r}; expected one of {sorted(recipes)}")
    recipe = recipes[name]
    fields = [f.name for f in dataclasses.fields(recipe)]
    changes = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in fields:
            raise ValueError(f"{where}: option {part!r}; expected PRESET[,FIELD=VALUE...] with "
                             f"FIELD one of {fields}")
        key = key.strip()
        changes[key] = _parse_value(value.strip(), getattr(recipe, key), f"{where}: {key}")
    return name, dataclasses.replace(recipe, **changes)


def _model_config(preset: str, recipe: Recipe) -> ml_collections.ConfigDict:
    """The RADBlur config of `preset` with the recipe's compute dtype and remat (not validated:
    `check_config` validates it after the command line's overrides)."""
    cfg = radblur_config(preset)
    cfg.dtype = recipe.compute_dtype  # drives encoder.dtype too (one FieldReference)
    cfg.encoder.remat = recipe.remat
    return cfg


def training_config(stage: str, preset: str, recipe: Recipe, *, dataset: str
                    ) -> ml_collections.ConfigDict:
    """The fields both training stages share, filled from `recipe` (a fresh ConfigDict).

    `dataset` is the built-in dataset used when none is given (synthetic | synthetic_depth).
    """
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.model = _model_config(preset, recipe)
    c.seed = 0

    c.data = ml_collections.ConfigDict(dataset_spec(dataset, split="train"))
    c.eval_data = ml_collections.ConfigDict(dataset_spec(dataset, split="test"))
    c.input = ml_collections.ConfigDict(dict(crop_size=recipe.crop_size, worker_count=0,
                                             read_threads=2))

    c.train = ml_collections.ConfigDict(dict(
        num_steps=recipe.num_steps, batch_size=recipe.batch_size, log_every=recipe.log_every,
        checkpoint_every=recipe.checkpoint_every, eval_every=recipe.eval_every,
        ema_decay=recipe.ema_decay, split_step="auto"))
    c.optimizer = default_optimizer_config()
    c.optimizer.lr = recipe.lr
    c.optimizer.warmup_steps = recipe.warmup_steps
    c.optimizer.layer_decay = recipe.layer_decay
    # Moments sharded like their parameters where the recipe shards parameters; else one
    # flat vector (a shorter compile). Fixed here, not by the mesh: it is the checkpoint's
    # structure, and a run may resume on another mesh.
    c.optimizer.layout = "per_leaf" if recipe.fsdp > 1 else "flat"

    # Batches are split over both axes: FSDP devices are data-parallel too; only parameters
    # and optimiser state differ between the axes (sharded over fsdp, replicated over data).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=recipe.fsdp,
                                            batch_axes=("data", "fsdp")))
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


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field as `config.<path>=<value>: why`.

    Cheap (no devices, no data): the stage, the integer fields, the model config (validated
    here, once), the init paths, and the stage's own fields.
    """
    from radblur_jax.train import split_step
    from radblur_jax.train.tasks import TASKS
    if config.stage not in TASKS:
        raise ValueError(f"config.stage={config.stage!r}: training runs one of {sorted(TASKS)}")
    for name in _INT_FIELDS:
        value = config.train[name]
        if not isinstance(value, int) or value < (0 if name == "eval_every" else 1):
            raise ValueError(f"config.train.{name}={value!r}: expected a positive integer")
    for key in ("data", "eval_data"):
        if "name" not in config[key]:
            raise ValueError(f"config.{key}: a dataset spec needs `name`")
    split_step.use_split_step(config.train.split_step)  # ValueError for a bad choice
    _check_optimizer(config.optimizer)
    validate_config(config.model)
    init = config.init
    if init.checkpoint and init.pretrained:
        raise ValueError("config.init: give checkpoint or pretrained, not both")
    for key in ("checkpoint", "pretrained"):
        path = init[key]
        if path and not os.path.isdir(os.path.expanduser(path)):
            raise ValueError(f"config.init.{key}={path}: no such directory")
    TASKS[config.stage].check_config(config)


def _check_optimizer(oc: ml_collections.ConfigDict) -> None:
    """The optimiser's choices and counts (`optimizer.make_optimizer` reads them later)."""
    check_choice("optimizer.schedule", oc.schedule, SCHEDULES)
    check_choice("optimizer.layout", oc.layout, LAYOUT_CHOICES)
    if not isinstance(oc.accumulate_steps, int) or oc.accumulate_steps < 1:
        raise ValueError(f"config.optimizer.accumulate_steps={oc.accumulate_steps!r}: expected "
                         f"a positive integer")
    if not isinstance(oc.warmup_steps, int) or oc.warmup_steps < 0:
        raise ValueError(f"config.optimizer.warmup_steps={oc.warmup_steps!r}: expected an "
                         f"integer >= 0")
    if isinstance(oc.freeze, str):
        raise ValueError(f"config.optimizer.freeze={oc.freeze!r}: expected a tuple of regexes")
    try:
        freeze_regexes(oc.freeze)
    except FreezePatternError as e:
        raise ValueError(f"config.{e}") from None


def fit_warmup(config: ml_collections.ConfigDict) -> str | None:
    """Clips `optimizer.warmup_steps` to a tenth of a run too short for it (the cosine schedule
    needs warmup < train.num_steps), in place; returns the line to log, or None."""
    steps, warmup = int(config.train.num_steps), int(config.optimizer.warmup_steps)
    if config.optimizer.schedule != "cosine" or warmup < steps:
        return None
    config.optimizer.warmup_steps = steps // 10
    return (f"optimizer.warmup_steps={warmup} is not below train.num_steps={steps}: warmup "
            f"clipped to {steps // 10} steps for this run")


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path` (as `--config path:arg` loads it)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_radblur_config_{name}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{path}: not a Python config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
