"""Model side of training: the resolved model config, the module, initial parameters.

Stage "depth" trains `DepthAnything(cfg.encoder, cfg.dpt)` (the tree RADBlur keeps under
`params["depth"]`); stage "deblur" trains the whole `RADBlur`.
"""
from __future__ import annotations

import logging
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.models.configs import DTYPES, check_choice, radblur_config, validate_config
from radblur_jax.models.depth_anything import build_depth_anything
from radblur_jax.models.radblur import build_radblur
from radblur_jax.train.pretrained import splice_depth_params


def _merge(dst: ml_collections.ConfigDict, src: dict, where: str) -> None:
    for k, v in src.items():
        if k not in dst:
            raise ValueError(f"config.model_overrides.{where}{k}: no such model field; "
                             f"expected one of {sorted(dst.keys())}")
        if isinstance(v, dict):
            _merge(dst[k], v, f"{where}{k}.")
        else:
            dst[k] = v


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The RADBlur config of the preset `config.model` with overrides, remat and dtype applied."""
    check_choice("compute_dtype", config.compute_dtype, DTYPES)
    cfg = radblur_config(config.model)
    _merge(cfg, config.model_overrides.to_dict(), "")
    cfg.encoder.remat = bool(config.remat)
    cfg.dtype = config.compute_dtype  # drives encoder.dtype too (one FieldReference)
    return validate_config(cfg)


def build_model(config: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict
                ) -> nn.Module:
    """The module a stage trains."""
    if config.stage == "depth":
        return build_depth_anything(cfg)
    return build_radblur(cfg)


def init_shape(config: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict
               ) -> tuple[int, int, int, int]:
    p = int(cfg.encoder.patch_size)
    return (1, 2 * p, 2 * p, 3) if config.stage == "depth" else (1, 32, 32, 3)


def random_params(config: ml_collections.ConfigDict, model: nn.Module,
                  cfg: ml_collections.ConfigDict, rng: jax.Array) -> Any:
    """Random initial parameters (float32), traced: call it inside a jit (`init_params`)."""
    return model.init(rng, jnp.zeros(init_shape(config, cfg), jnp.float32))["params"]


def init_params(config: ml_collections.ConfigDict, model: nn.Module,
                cfg: ml_collections.ConfigDict, rng: jax.Array) -> Any:
    """`random_params` jitted with `init_compiler_options()` (fast to compile on the CPU)."""
    return jax.jit(lambda r: random_params(config, model, cfg, r),
                   compiler_options=init_compiler_options())(rng)


def _splice(config: ml_collections.ConfigDict, params: Any, depth_tree: Any) -> Any:
    """Puts a Depth Anything (or DINOv2) tree into this stage's params."""
    if config.stage == "depth":
        return splice_depth_params({"depth": params}, depth_tree)["depth"]
    return splice_depth_params(params, depth_tree)


def initial_params(config: ml_collections.ConfigDict, model: nn.Module,
                   cfg: ml_collections.ConfigDict, rng: jax.Array) -> Any:
    """Random params, then encoder (+ DPT) from `init.checkpoint` (a stage-A training run) or
    `init.pretrained` (a converted Depth Anything V2 / DINOv2 directory), if set."""
    params = init_params(config, model, cfg, rng)
    if config.init.checkpoint and config.init.pretrained:
        raise ValueError("config.init: give checkpoint or pretrained, not both")
    if config.init.checkpoint:
        from radblur_jax.train.checkpointing import load_params_for_inference
        src_config, src = load_params_for_inference(config.init.checkpoint, use_ema=True)
        if src_config.stage == "deblur":
            src = src["depth"]
        logging.info("init: encoder + depth branch from %s", config.init.checkpoint)
        params = _splice(config, params, src)
    elif config.init.pretrained:
        from radblur_jax.convert.checkpoint import load_pretrained
        _, src, _ = load_pretrained(config.init.pretrained)
        logging.info("init: encoder (+ DPT) from converted weights %s", config.init.pretrained)
        params = _splice(config, params, src)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
