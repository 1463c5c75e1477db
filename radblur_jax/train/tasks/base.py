"""`Task`: what one training stage brings to the stage-agnostic loop (radblur_jax/train/loop.py).

A task owns its model (built from `config.model`), the batch fields it reads, the parameter
init, the loss gradients and the eval step, the validation grid, the metric the best checkpoint
keeps, its optimisers and state extras, and any phases after the main one. The loop owns the
mesh, the cadence of logs, evals and checkpoints, and nothing stage-specific.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.train import optimizer, split_step, steps
from radblur_jax.train.state import Optimizers, TrainState, create_state

Step = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


class Phase(NamedTuple):
    """A phase after the main one: `num_steps` calls of `step` (unjitted; the loop jits it with
    the state's shardings and donation)."""
    name: str
    num_steps: int
    step: Step


class Task:
    """Base of `DeblurTask` and `DepthTask`; `Task(config)` builds the model."""

    stage: ClassVar[str]
    fields: ClassVar[tuple[str, ...]]     # batch fields, each `(B, H, W, C)` float32
    best_metric: ClassVar[str | None] = None  # validation scalar the best checkpoint maximises

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model = self.build_model(config.model)

    # ---- per-stage parts
    @staticmethod
    def check_config(config: ml_collections.ConfigDict) -> None:
        """ValueError naming a bad stage-specific field (called by `check_config`)."""

    @staticmethod
    def build_model(cfg: ml_collections.ConfigDict) -> nn.Module:
        raise NotImplementedError

    @staticmethod
    def depth_tree(params: Any) -> Any:
        """The Depth Anything tree (`pretrained/`, `depth_head/`) in this stage's params."""
        raise NotImplementedError

    def init_shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def splice_depth(self, params: Any, depth_tree: Any) -> Any:
        """`params` with the encoder (+ DPT) replaced by `depth_tree`."""
        raise NotImplementedError

    def gradients(self, state: TrainState, batch: dict[str, jax.Array]
                  ) -> tuple[Any, dict[str, jax.Array]]:
        """`(grads, metrics)` of the loss at `state.params`; metrics include `loss`."""
        raise NotImplementedError

    def eval_step(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-image metrics `(B,)` (averaged by the loop as `val_<name>`) and images."""
        raise NotImplementedError

    def grid_columns(self, batch: dict[str, np.ndarray], out: dict[str, np.ndarray]
                     ) -> list[np.ndarray]:
        """The validation grid's columns, each `(B, H, W[, 3])`, from one host batch."""
        raise NotImplementedError

    @property
    def eval_multiple(self) -> int:
        """Validation crops are cut to a multiple of this."""
        return 1

    def make_optimizers(self, params: Any) -> Optimizers:
        """The main optimiser (`params` may be abstract: only the tree is read)."""
        return Optimizers(optimizer.make_optimizer(self.config, params), None,
                          optimizer.learning_rate_fn(self.config))

    def create_state(self, params: Any, optimizers: Optimizers, rng: jax.Array) -> TrainState:
        """A fresh state at step 0 (traceable: the loop jits it with out_shardings)."""
        return create_state(params, optimizers, rng)

    def extra_phases(self, optimizers: Optimizers) -> list[Phase]:
        """Phases after the main one's `train.num_steps` steps."""
        return []

    # ---- shared
    def init_params(self, rng: jax.Array) -> Any:
        """Random float32 params, traced: call it inside a jit (`load_initial_params`, the
        loop's state init) compiled with `init_compiler_options()`. One jitted function per
        task, so shape inference (`jax.eval_shape(task.init_params, rng)`) and the state init
        that follows share one trace of the model's init."""
        return self._init_params_jit(rng)

    @functools.cached_property
    def _init_params_jit(self) -> Callable[[jax.Array], Any]:
        return jax.jit(lambda rng: self.model.init(
            rng, jnp.zeros(self.init_shape(), jnp.float32))["params"])

    def load_initial_params(self, rng: jax.Array) -> Any:
        """Random params, then encoder (+ DPT) from `init.checkpoint` (a training workdir of
        either stage) or `init.pretrained` (a converted Depth Anything V2 / DINOv2 directory)."""
        from radblur_jax.train.tasks import TASKS
        params = jax.jit(self.init_params, compiler_options=init_compiler_options())(rng)
        init = self.config.init
        if init.checkpoint:
            from radblur_jax.workdir import load_params_for_inference
            src_config, src = load_params_for_inference(init.checkpoint, use_ema=True)
            logging.info("init: encoder + depth branch from %s", init.checkpoint)
            params = self.splice_depth(params, TASKS[src_config.stage].depth_tree(src))
        elif init.pretrained:
            from radblur_jax.convert.checkpoint import load_pretrained
            _, src, _ = load_pretrained(init.pretrained)
            logging.info("init: encoder (+ DPT) from converted weights %s", init.pretrained)
            params = self.splice_depth(params, src)
        return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)

    def update(self, optimizers: Optimizers, *, sharded_params: bool = False) -> Callable:
        """The main optimiser's half of the step: `(state, grads) -> (state, metrics)`;
        `sharded_params`: the params are sharded over devices (the gradient norms are then
        reduced per leaf, `steps.gradient_norms`)."""
        return functools.partial(steps.apply_gradients, optimizers=optimizers,
                                 ema_decay=float(self.config.train.ema_decay),
                                 accumulate_steps=int(self.config.optimizer.accumulate_steps),
                                 per_leaf_norms=sharded_params)

    def train_step(self, optimizers: Optimizers, *, split: bool,
                   shardings: split_step.StepShardings | None = None) -> Step:
        """The main phase's step, as training compiles it (`split_step.train_step`)."""
        sharded = shardings is not None and not all(
            s.is_fully_replicated for s in jax.tree.leaves(shardings.state.params))
        return split_step.train_step(self.gradients,
                                     self.update(optimizers, sharded_params=sharded),
                                     split=split, shardings=shardings)
