"""The optimiser: AdamW with warmup + cosine, clipping, layer-wise lr decay, freezing, accumulation.

`make_optimizer(config, params)` reads `config.optimizer` (fields in `default_optimizer_config`)
and `config.train.num_steps`. Parameter paths are '/'-joined Flax names
(`depth/pretrained/blocks_3/attn/qkv/kernel`, docs/conventions.md).

Rules, by path:
- Weight decay applies to leaves named `kernel` only (Dense / Conv / ConvTranspose weights).
  Biases, norm `scale`s, LayerScale and NAFBlock `gamma`/`beta`, `alpha_k`, attention `scale`s,
  `cls_token`, `pos_embed`, `register_tokens`, `mask_token` are not decayed. (A shape rule such as
  "ndim >= 2" would be wrong here: the sub-decoders' params are stacked on a leading K axis.)
- Layer-wise lr decay (`layer_decay` d, 1.0 = off) for the ViT under `pretrained/` (at the top
  level or under `depth/`): block i of n gets `lr * d ** (n - i)`; `patch_embed`, `pos_embed`,
  `cls_token`, `register_tokens`, `mask_token` get `lr * d ** (n + 1)`; everything else (the ViT's
  final `norm`, the DPT, stem, decoder, exit head) the full lr. n counts the `blocks_*` in `params`.
- `freeze`: regexes, matched with `re.search` against each path; matching leaves get exactly zero
  updates and no Adam moments or accumulators.

Order per trainable leaf: (accumulate k micro-steps, mean) -> clip by global norm (over the
trainable leaves) -> Adam -> + wd * param (masked) -> * -lr(step) -> * layer scale.

The schedule is indexed by the training loop's step (one `update` call = one micro-batch): with
accumulation the update applied after micro-steps `j*k .. j*k + k-1` uses `lr(j * k)`.

`layout`: "per_leaf" runs that chain as optax transforms, one set of moments per leaf (each
sharded like its parameter: the recipes that shard parameters over `fsdp` take it); "flat"
runs the same maths with the moments as one vector (`flat_adamw`: a few kernels instead of a
few per leaf, a much shorter compile of the update). The layout is the checkpoint's
`opt_state` structure, so it is a config field, not derived from the mesh: a run resumed on
another mesh keeps it.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from radblur_jax.models.configs import check_choice
from radblur_jax.train.flat_adamw import flat_adamw

_VIT = re.compile(r"^(?:depth/)?pretrained/(?:blocks_(\d+)|(patch_embed|pos_embed|cls_token|"
                  r"register_tokens|mask_token))(?:/|$)")


def default_optimizer_config() -> ml_collections.ConfigDict:
    """AdamW defaults for `config.optimizer`; stage configs copy this and override fields."""
    return ml_collections.ConfigDict(dict(
        # NAFNet / AdaRevD train GoPro with AdamW at 1e-3..2e-4 and betas (0.9, 0.9). RADBlur
        # fine-tunes a pretrained ViT at batch 8-16 (NAFNet: 32), so take the low end of that range.
        lr=2e-4,
        b1=0.9,
        b2=0.9,  # NAFNet's beta2: faster-adapting second moments for restoration losses.
        eps=1e-8,
        # Decoupled, multiplied by the lr as in PyTorch AdamW (NAFNet uses 1e-3): a light decay.
        weight_decay=1e-3,
        warmup_steps=500,
        schedule="cosine",  # "cosine" (to lr * min_lr_ratio at train.num_steps) | "constant".
        min_lr_ratio=1e-3,
        clip_norm=1.0,  # global-norm clipping of the (mean) gradient; 0 = off. Guards spikes.
        # Depth Anything tunes the encoder at 10x lower lr than the head; 0.9 per block gives
        # the ViT-L's first blocks ~0.08x (0.9**24) and ViT-S's ~0.28x, the last block 0.9x.
        # Set 1.0 when the encoder starts from random weights.
        layer_decay=0.9,
        # Regexes over '/'-joined param paths, e.g. ("^depth/",); a tuple, so the command line
        # can set it (--config.optimizer.freeze='("^depth/",)').
        freeze=(),
        accumulate_steps=1,  # optax.MultiSteps over this many micro-batches; 1 = off.
        layout="flat",  # "flat" | "per_leaf": the moments' layout (module docstring).
    ))


LAYOUT_CHOICES = ("flat", "per_leaf")
SCHEDULES = ("cosine", "constant")


def path_str(path: tuple) -> str:
    """'/'-joined names of a `tree_flatten_with_path` key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def _paths(tree: Any) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def is_decayed(path: str) -> bool:
    """Whether weight decay applies to the leaf at `path` (leaves named `kernel`)."""
    return path.rsplit("/", 1)[-1] == "kernel"


def weight_decay_mask(params: Any) -> Any:
    """Bool tree like `params`: True where weight decay applies (`is_decayed`)."""
    return _map_paths(lambda path, _: is_decayed(path), params)


def num_vit_blocks(params: Any) -> int:
    """Number of distinct `pretrained/blocks_{i}` in `params` (0 without a ViT)."""
    return len({m.group(1) for m in map(_VIT.match, _paths(params)) if m and m.group(1)})


def layer_lr_scale(path: str, num_blocks: int, layer_decay: float) -> float:
    """lr multiplier of the leaf at `path` (see the module docstring)."""
    m = _VIT.match(path)
    if m is None or layer_decay == 1.0:
        return 1.0
    layer = int(m.group(1)) + 1 if m.group(1) is not None else 0
    return float(layer_decay) ** (num_blocks + 1 - layer)


class FreezePatternError(ValueError):
    """An `optimizer.freeze` pattern that is not a regex or matches no parameter path."""


def freeze_regexes(patterns: list[str] | tuple[str, ...]) -> list[re.Pattern]:
    """The `optimizer.freeze` patterns compiled; FreezePatternError names one that is not a
    regex (or not a string)."""
    compiled = []
    for pat in patterns:
        try:
            compiled.append(re.compile(pat))
        except (re.error, TypeError) as e:
            raise FreezePatternError(f"optimizer.freeze: {pat!r} is not a regex ({e})") from None
    return compiled


def frozen_mask(params: Any, patterns: list[str] | tuple[str, ...]) -> Any:
    """Bool tree like `params`: True where a `patterns` regex matches the leaf's path.

    Raises FreezePatternError naming `optimizer.freeze` for a bad regex or one that matches
    nothing.
    """
    compiled = freeze_regexes(patterns)
    paths = _paths(params)
    for pat, rx in zip(patterns, compiled):
        if not any(rx.search(p) for p in paths):
            raise FreezePatternError(f"optimizer.freeze: {pat!r} matches no parameter path "
                                     f"(paths look like {paths[0]!r})")
    return _map_paths(lambda path, _: any(rx.search(path) for rx in compiled), params)


def learning_rate_fn(config: ml_collections.ConfigDict) -> optax.Schedule:
    """lr at training-loop step `s`: linear warmup from 0, then cosine or constant.

    cosine: `lr * (min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * t)) / 2)` with
    `t = (s - warmup) / (num_steps - warmup)`, reaching `lr * min_lr_ratio` at `train.num_steps`.
    """
    oc, num_steps = config.optimizer, int(config.train.num_steps)
    lr, warmup = float(oc.lr), int(oc.warmup_steps)
    if oc.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
            [warmup])
    if oc.schedule != "cosine":
        raise ValueError(f"optimizer.schedule: {oc.schedule!r}; expected cosine or constant")
    if not 0 <= warmup < num_steps:
        raise ValueError(f"optimizer.warmup_steps: {warmup} must be in [0, train.num_steps="
                         f"{num_steps}) for the cosine schedule")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, num_steps,
                                              end_value=lr * float(oc.min_lr_ratio))


def make_optimizer(config: ml_collections.ConfigDict, params: Any
                   ) -> optax.GradientTransformation:
    """The optimiser for `params` (a tree or its `jax.eval_shape`); see the module docstring."""
    oc = config.optimizer
    k = int(oc.accumulate_steps)
    if k < 1:
        raise ValueError(f"optimizer.accumulate_steps: {k}; expected an integer >= 1")
    base = learning_rate_fn(config)
    schedule = base if k == 1 else (lambda count: base(count * k))
    n = num_vit_blocks(params)
    decay = float(oc.layer_decay)
    if check_choice("optimizer.layout", oc.layout, LAYOUT_CHOICES) == "flat":
        tx = flat_adamw(schedule, b1=float(oc.b1), b2=float(oc.b2), eps=float(oc.eps),
                        weight_decay=float(oc.weight_decay), clip_norm=float(oc.clip_norm),
                        decay_mask=is_decayed,
                        lr_scale=lambda path: layer_lr_scale(path, n, decay),
                        path_str=path_str)
    else:
        tx = _per_leaf_adamw(oc, schedule, n)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    if not oc.freeze:
        return tx
    frozen = frozen_mask(params, list(oc.freeze))
    labels = jax.tree_util.tree_map(lambda f: "frozen" if f else "train", frozen)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _per_leaf_adamw(oc: ml_collections.ConfigDict, schedule: optax.Schedule, n: int
                    ) -> optax.GradientTransformation:
    """The module docstring's chain as optax transforms, moments per leaf."""
    decay = float(oc.layer_decay)
    parts = []
    if float(oc.clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(oc.clip_norm)))
    parts += [optax.scale_by_adam(float(oc.b1), float(oc.b2), float(oc.eps))]
    if float(oc.weight_decay) > 0:
        parts.append(optax.add_decayed_weights(float(oc.weight_decay), mask=weight_decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    if decay != 1.0:
        parts.append(optax.stateless(lambda updates, _: _map_paths(
            lambda path, u: u * layer_lr_scale(path, n, decay), updates)))
    return optax.chain(*parts)


def ema_update(ema_params: Any, params: Any, decay: float | jax.Array) -> Any:
    """`decay * ema + (1 - decay) * params` per leaf (decay 0 copies `params`); jittable."""
    return jax.tree_util.tree_map(
        lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params)
