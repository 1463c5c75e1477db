"""Pure step functions `(state, batch) -> (state, metrics)` and evaluation steps.

Batches: stage "deblur" `{blur, sharp}` `(B, H, W, 3)` float32 in [0, 1]; stage "depth"
`{image (B, H, W, 3), depth (B, H, W, 1), valid (B, H, W, 1)}` with H, W multiples of the patch
size. Metrics are scalars (means over the batch). Bind the static arguments with
`functools.partial`, then `jax.jit` (the loop adds shardings and donation).

Each main train step is two halves, `*_gradients(state, batch) -> (grads, metrics)` and
`apply_gradients(state, grads) -> (state, metrics)`; `split_step.train_step` runs them as one
program or as two compiled concurrently. The stage's task (radblur_jax/train/tasks) binds them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree

from radblur_jax.eval import metrics as eval_metrics
from radblur_jax.models.depth_anything import IMAGENET_MEAN, IMAGENET_STD
from radblur_jax.models.radblur import RADBlur
from radblur_jax.train import losses
from radblur_jax.train.depth_losses import depth_loss
from radblur_jax.train.optimizer import ema_update
from radblur_jax.train.state import Optimizers, TrainState


def apply_gradients(state: TrainState, grads: Any, *, optimizers: Optimizers,
                    ema_decay: float, accumulate_steps: int = 1, per_leaf_norms: bool = False
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
    """The main optimiser's update of `state` by `grads` (shaped like `state.params`), the EMA
    update and the step count; metrics lr and the gradient norms (`gradient_norms`).

    With `accumulate_steps` k > 1 the params change once every k steps (`optax.MultiSteps`,
    after steps k-1, 2k-1, ...), and the EMA moves only then: once per update, as without
    accumulation, not k times towards the same params."""
    updates, opt_state = optimizers.main.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if accumulate_steps > 1:
        ema_decay = jnp.where((state.step + 1) % accumulate_steps == 0, ema_decay, 1.0)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        ema_params=ema_update(state.ema_params, params, ema_decay))
    return new, {**gradient_norms(grads, per_leaf=per_leaf_norms),
                 "lr": optimizers.lr(state.step)}


def gradient_norms(grads: Any, *, per_leaf: bool = False) -> dict[str, jax.Array]:
    """`grad_norm`, the L2 norm of all of `grads`, and `grad_norm/<part>` for each top-level
    part of the param tree (`stem`, `decoder`, `depth`, `exit_head`; stage A: `pretrained`,
    `depth_head`). A part whose gradient dies (stage A's depth head once did) shows as its
    norm falling to zero while the total stays up.

    Each part's squares are summed in one reduction over its leaves concatenated, a few kernels
    where `optax.tree.norm` makes one per leaf; `per_leaf` (for params sharded over devices,
    whose concatenation would gather every gradient onto every device) takes `optax.tree.norm`,
    which reduces each leaf where it lies."""
    def squares(part: Any) -> jax.Array:
        if per_leaf:
            return optax.tree.norm(part, squared=True)
        return jnp.sum(jnp.square(ravel_pytree(part)[0]))

    sq = {name: squares(part) for name, part in grads.items()}
    return {"grad_norm": jnp.sqrt(sum(sq.values())),
            **{f"grad_norm/{name}": jnp.sqrt(s) for name, s in sq.items()}}


def _depth_on_sharp(module: RADBlur, sharp: jax.Array) -> jax.Array:
    return module.encode(sharp)[1].disparity


def normalized_disparity(d: jax.Array) -> jax.Array:
    """Per-image scale-and-shift normalisation `(d - median) / mean|d - median|`, `(B, H, W)`."""
    med = jnp.median(d, axis=(1, 2), keepdims=True)
    return (d - med) / (jnp.mean(jnp.abs(d - med), axis=(1, 2), keepdims=True) + 1e-6)


def deblur_gradients(state: TrainState, batch: dict[str, jax.Array], *, model: RADBlur,
                     config: ml_collections.ConfigDict) -> tuple[Any, dict[str, jax.Array]]:
    """`(grads, metrics)` of the deblur loss at `state.params`: deep-supervision L1 (or PSNR) +
    FFT loss over the K outputs, plus optional depth self-distillation: L1 between the
    normalised disparities the depth branch predicts on the sharp image now and with the frozen
    initial depth params (`state.teacher`). Metrics: loss, pixel_loss, psnr [, distill_loss]."""
    blur, sharp = batch["blur"], batch["sharp"]
    distill_w = float(config.loss.distill_weight)

    def loss_fn(params):
        out = model.apply({"params": params}, blur)
        pixel = losses.deblur_loss(out.restored, sharp, pixel=config.loss.pixel,
                                   fft_weight=float(config.loss.fft_weight))
        aux = {"pixel_loss": pixel, "psnr": jnp.mean(eval_metrics.psnr(out.restored[-1], sharp))}
        total = pixel
        if distill_w > 0:
            student = model.apply({"params": params}, sharp, method=_depth_on_sharp)
            teacher = jax.lax.stop_gradient(model.apply(
                {"params": {**params, "depth": state.teacher}}, sharp, method=_depth_on_sharp))
            distill = jnp.mean(jnp.abs(normalized_disparity(student)
                                       - normalized_disparity(teacher)))
            aux["distill_loss"] = distill
            total = total + distill_w * distill
        return total, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, {"loss": loss, **aux}


def exit_train_step(state: TrainState, batch: dict[str, jax.Array], *, model: RADBlur,
                    optimizers: Optimizers) -> tuple[TrainState, dict[str, jax.Array]]:
    """Exit-head phase: cross-entropy of the blur-degree classes (from the blurry/sharp PSNR);
    only `params["exit_head"]` changes (and is copied to the EMA params as is)."""
    labels = losses.exit_labels(batch["blur"], batch["sharp"], model.cfg.exit.psnr_edges)

    def loss_fn(head):
        logits = model.apply({"params": {**state.params, "exit_head": head}}, batch["blur"],
                             method=RADBlur.exit_logits)
        return losses.exit_cross_entropy(logits, labels), logits

    head = state.params["exit_head"]
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(head)
    updates, exit_state = optimizers.exit.update(grads, state.exit_opt_state, head)
    head = optax.apply_updates(head, updates)
    new = state.replace(step=state.step + 1, params={**state.params, "exit_head": head},
                        ema_params={**state.ema_params, "exit_head": head},
                        exit_opt_state=exit_state)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return new, {"loss": loss, "exit_accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}


def vit_normalize(image: jax.Array) -> jax.Array:
    """`(B, H, W, 3)` in [0, 1] -> ImageNet-normalised ViT input."""
    return (image - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def depth_gradients(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
                    config: ml_collections.ConfigDict) -> tuple[Any, dict[str, jax.Array]]:
    """`(grads, {"loss"})` of stage A's loss at `state.params`: scale-and-shift-invariant
    disparity + multi-scale gradient matching."""
    x = vit_normalize(batch["image"])

    def loss_fn(params):
        disparity = model.apply({"params": params}, x, return_features=False).disparity
        return depth_loss(disparity, batch["depth"][..., 0], batch["valid"][..., 0],
                          grad_weight=float(config.loss.grad_weight),
                          scales=int(config.loss.scales))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return grads, {"loss": loss}


def deblur_eval_step(params: Any, batch: dict[str, jax.Array], *, model: RADBlur
                     ) -> dict[str, jax.Array]:
    """Per image `(B,)`: psnr, ssim (3-D), blurry_psnr; images restored `(B, H, W, 3)`
    (the last sub-decoder, clipped to [0, 1]) and disparity `(B, H, W)`."""
    out = model.apply({"params": params}, batch["blur"])
    restored = jnp.clip(out.restored[-1], 0.0, 1.0)
    sharp = batch["sharp"]
    return {"psnr": eval_metrics.psnr(restored, sharp),
            "ssim": eval_metrics.ssim(restored, sharp, mode="3d"),
            "blurry_psnr": eval_metrics.psnr(batch["blur"], sharp),
            "restored": restored, "disparity": out.disparity}


def depth_eval_step(params: Any, batch: dict[str, jax.Array], *, model: nn.Module
                    ) -> dict[str, jax.Array]:
    """Per image `(B,)`: abs_rel, delta1; disparity `(B, H, W)`."""
    disparity = model.apply({"params": params}, vit_normalize(batch["image"]),
                            return_features=False).disparity
    m = eval_metrics.depth_metrics(disparity, batch["depth"], batch["valid"])
    return {**m, "disparity": disparity}
