"""Stage A: depth pretraining of the encoder + DPT (the tree RADBlur keeps under `depth/`)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging

from radblur_jax.models.configs import PATCH_SIZE
from radblur_jax.models.depth_anything import build_depth_anything
from radblur_jax.train import steps
from radblur_jax.train.pretrained import splice_depth_params
from radblur_jax.train.state import TrainState
from radblur_jax.train.tasks.base import Task


class DepthTask(Task):
    """Batches `{image, depth, valid}` with sides multiples of the patch; loss:
    scale-and-shift-invariant disparity + multi-scale gradient matching; validation AbsRel and
    delta1. Params are the Depth Anything tree."""

    stage = "depth"
    fields = ("image", "depth", "valid")

    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        crop = config.input.crop_size
        if not isinstance(crop, int) or crop < PATCH_SIZE or crop % PATCH_SIZE:
            raise ValueError(f"config.input.crop_size={crop!r}: stage A crops are a positive "
                             f"multiple of the ViT patch ({PATCH_SIZE})")
        weight = config.loss.grad_weight
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"config.loss.grad_weight={weight!r}: expected a number >= 0")
        if weight > 0 and not (config.init.checkpoint or config.init.pretrained):
            # configs/depth_pretrain.py (DepthRecipe) says why: from random weights the
            # gradient-matching term flattens the prediction and the head's ReLU dies.
            logging.warning(
                "config.loss.grad_weight=%s from random weights: gradient matching can "
                "flatten a random prediction until the depth head's ReLU dies (zero "
                "gradient); use grad_weight=0 without init.checkpoint / init.pretrained",
                weight)

    @staticmethod
    def build_model(cfg: ml_collections.ConfigDict) -> nn.Module:
        return build_depth_anything(cfg)

    @staticmethod
    def depth_tree(params: Any) -> Any:
        return params

    @property
    def eval_multiple(self) -> int:
        return int(self.config.model.encoder.patch_size)

    def init_shape(self) -> tuple[int, int, int, int]:
        p = self.eval_multiple
        return (1, 2 * p, 2 * p, 3)

    def splice_depth(self, params: Any, depth_tree: Any) -> Any:
        return splice_depth_params({"depth": params}, depth_tree)["depth"]

    def gradients(self, state: TrainState, batch: dict[str, jax.Array]):
        return steps.depth_gradients(state, batch, model=self.model, config=self.config)

    def eval_step(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return steps.depth_eval_step(params, batch, model=self.model)

    def grid_columns(self, batch: dict[str, np.ndarray], out: dict[str, np.ndarray]
                     ) -> list[np.ndarray]:
        true_disparity = np.where(batch["valid"][..., 0] > 0,
                                  1.0 / np.maximum(batch["depth"][..., 0], 1e-6), 0.0)
        return [batch["image"], true_disparity, out["disparity"]]
