"""The one place where eval, the deblur CLI, export and benchmarks get a model and its params."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from radblur_jax.models.configs import radblur_config
from radblur_jax.models.radblur import RADBlur, build_radblur
from radblur_jax.workdir import load_params_for_inference


class CheckpointLoadError(ValueError):
    """A checkpoint could not be loaded for inference; the message names the path."""


@dataclasses.dataclass
class LoadedModel:
    """model: the RADBlur module; params: its `params` tree; description: for reports."""
    model: RADBlur
    params: Any
    description: str


def sampled_params(model: RADBlur, seed: int = 0) -> Any:
    """Random `params` for `model` drawn in numpy, without compiling `init` (smoke runs,
    benchmarks); training initialises with `model.init` instead (`train/tasks`).

    Shapes from `jax.eval_shape(model.init)`; kernels ~ N(0, 1/fan_in) (a leading stacked
    sub-decoder axis is not fan-in), coupling alphas 0.5, norm scales 1, other leaves
    N(0, 0.02).
    """
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)))["params"],
                            jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        name, shape = names[-1], leaf.shape
        if name.startswith("alpha"):
            return np.full(shape, 0.5, np.float32)
        if name == "scale" and len(names) > 1 and "norm" in names[-2]:
            return np.ones(shape, np.float32)
        if name == "kernel":
            fan_shape = shape[1:-1] if "sub_decoders" in names else shape[:-1]
            std = 1.0 / np.sqrt(max(1, int(np.prod(fan_shape))))
        else:
            std = 0.02
        return rng.normal(0.0, std, shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def with_dtype(cfg: Any, dtype: str | None) -> Any:
    """A copy of a RADBlur config with compute dtype `dtype` (None/empty: unchanged)."""
    cfg = radblur_config(cfg) if isinstance(cfg, str) else cfg
    cfg = cfg.copy_and_resolve_references()  # plain values: the original is left unchanged
    if dtype:
        cfg.dtype = dtype
        cfg.encoder.dtype = dtype
    return cfg


def load_random(preset: str, seed: int = 0, *, dtype: str | None = None) -> LoadedModel:
    """Preset with random weights (`sampled_params`): for smoke runs only."""
    model = build_radblur(with_dtype(preset, dtype))
    return LoadedModel(model, sampled_params(model, seed), f"RADBlur-{preset} (RANDOM weights)")


def load_trained(path: str, *, use_ema: bool = True,
                    dtype: str | None = None) -> LoadedModel:
    """Model + params from a training workdir (latest checkpoint) or a checkpoint step dir.

    Weights from `workdir.load_params_for_inference`; the network is rebuilt from the model
    config saved with the checkpoint (compute dtype replaced by `dtype` if given).
    Raises CheckpointLoadError naming `path`.
    """
    try:
        config, params = load_params_for_inference(path, use_ema=use_ema)
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        raise CheckpointLoadError(f"{path}: not a readable training checkpoint ({e})") from None
    stage = config.get("stage", "deblur")
    if stage != "deblur":
        raise CheckpointLoadError(f"{path}: a stage-{stage!r} checkpoint; deblurring needs a "
                                  "stage 'deblur' (RADBlur) checkpoint")
    model_cfg = config.get("model_config", None)
    model = build_radblur(with_dtype(model_cfg if model_cfg is not None else config.model,
                                     dtype))
    weights = "EMA" if use_ema else "raw"
    return LoadedModel(model, params, f"RADBlur-{model.cfg.get('name', '?')} ({path}, {weights})")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line choice of model the photo tools share (deblur CLI, demo page):
    `--checkpoint` or `--random-init`, `--raw-weights`, `--dtype`, `--seed`; read them back with
    `load_from_args`."""
    from radblur_jax.models.configs import radblur_names
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training workdir (latest checkpoint) or a checkpoint "
                     "step directory")
    src.add_argument("--random-init", metavar="PRESET", choices=radblur_names(),
                     help="SMOKE TEST ONLY, instead of --checkpoint: random weights for a preset "
                          f"({', '.join(radblur_names())}); the outputs are meaningless")
    parser.add_argument("--raw-weights", action="store_true", help="use the raw instead of the "
                        "EMA weights of a checkpoint")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="compute dtype (default: as saved with the checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model `add_model_arguments`' flags name; random weights warn on stderr.
    Raises CheckpointLoadError naming the checkpoint."""
    if args.random_init:
        print(f"WARNING: --random-init {args.random_init}: RANDOM WEIGHTS, a smoke test; the "
              "outputs are meaningless.", file=sys.stderr)
        return load_random(args.random_init, args.seed, dtype=args.dtype)
    return load_trained(args.checkpoint, use_ema=not args.raw_weights, dtype=args.dtype)

