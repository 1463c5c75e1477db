"""Stage B: RADBlur deblur fine-tuning, then the exit-head phase."""
from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from radblur_jax.models.configs import PIXEL_LOSSES, check_choice
from radblur_jax.models.radblur import RADBlur, build_radblur
from radblur_jax.train import steps
from radblur_jax.train.pretrained import splice_depth_params
from radblur_jax.train.state import Optimizers, TrainState, create_state
from radblur_jax.train.tasks.base import Phase, Task


class DeblurTask(Task):
    """Batches `{blur, sharp}`; loss: deep-supervision pixel + FFT loss [+ depth
    self-distillation against a frozen teacher]; validation PSNR/SSIM; after `train.num_steps`,
    `exit.steps` steps train only the exit head with its own Adam."""

    stage = "deblur"
    fields = ("blur", "sharp")
    best_metric = "val_psnr"

    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        check_choice("loss.pixel", config.loss.pixel, PIXEL_LOSSES)
        if not isinstance(config.exit.steps, int) or config.exit.steps < 0:
            raise ValueError(f"config.exit.steps={config.exit.steps!r}: expected an integer "
                             ">= 0")

    @staticmethod
    def build_model(cfg: ml_collections.ConfigDict) -> RADBlur:
        return build_radblur(cfg)

    @staticmethod
    def depth_tree(params: Any) -> Any:
        return params["depth"]

    def init_shape(self) -> tuple[int, int, int, int]:
        return (1, 32, 32, 3)

    def splice_depth(self, params: Any, depth_tree: Any) -> Any:
        return splice_depth_params(params, depth_tree)

    def gradients(self, state: TrainState, batch: dict[str, jax.Array]):
        return steps.deblur_gradients(state, batch, model=self.model, config=self.config)

    def eval_step(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return steps.deblur_eval_step(params, batch, model=self.model)

    def grid_columns(self, batch: dict[str, np.ndarray], out: dict[str, np.ndarray]
                     ) -> list[np.ndarray]:
        return [batch["blur"], out["restored"], batch["sharp"], out["disparity"]]

    def make_optimizers(self, params: Any) -> Optimizers:
        main = super().make_optimizers(params)
        if self.config.exit.steps > 0:
            return main._replace(exit=optax.adam(float(self.config.exit.lr)))
        return main

    def create_state(self, params: Any, optimizers: Optimizers, rng: jax.Array) -> TrainState:
        teacher = None
        if float(self.config.loss.distill_weight) > 0:  # the frozen initial depth params
            teacher = jax.tree.map(jax.numpy.copy, params["depth"])
        return create_state(params, optimizers, rng, teacher=teacher)

    def extra_phases(self, optimizers: Optimizers) -> list[Phase]:
        if not self.config.exit.steps:
            return []
        return [Phase("exit_head", int(self.config.exit.steps), functools.partial(
            steps.exit_train_step, model=self.model, optimizers=optimizers))]
