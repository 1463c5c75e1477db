"""The train state: one pytree of arrays (checkpointed as is) + the optimisers that update it."""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from radblur_jax.train import optimizer


@flax.struct.dataclass
class TrainState:
    """step `()` int32 (completed updates); params; opt_state; ema_params (EMA of params);
    rng `(2,)` uint32 key data; exit_opt_state (deblur: the exit head's own Adam, else None);
    teacher (deblur with distillation: the frozen initial depth params, else None)."""
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    exit_opt_state: Any = None
    teacher: Any = None


class Optimizers(NamedTuple):
    """`main` updates all params (frozen paths excluded by its config); `exit` only
    `params["exit_head"]` (None for stage A); `lr` maps a step to the main learning rate."""
    main: optax.GradientTransformation
    exit: optax.GradientTransformation | None
    lr: Any


def make_optimizers(config: ml_collections.ConfigDict, params: Any) -> Optimizers:
    """The optimisers for `config` (`params` may be abstract: only the tree structure is read)."""
    main = optimizer.make_optimizer(config, params)
    lr = optimizer.learning_rate_fn(config)
    exit_tx = None
    if config.stage == "deblur" and int(config.exit.steps) > 0:
        exit_tx = optax.adam(float(config.exit.lr))
    return Optimizers(main, exit_tx, lr)


def create_state(config: ml_collections.ConfigDict, params: Any, optimizers: Optimizers,
                 rng: jax.Array) -> TrainState:
    """A fresh state at step 0 around `params` (traceable: jit it with out_shardings)."""
    teacher = None
    if config.stage == "deblur" and float(config.loss.distill_weight) > 0:
        teacher = jax.tree.map(jnp.copy, params["depth"])
    exit_state = (optimizers.exit.init(params["exit_head"])
                  if optimizers.exit is not None else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizers.main.init(params),
                      ema_params=jax.tree.map(jnp.copy, params),
                      rng=jax.random.key_data(rng), exit_opt_state=exit_state, teacher=teacher)
