"""The train state: one pytree of arrays (checkpointed as is) + the optimisers that update it.

The stage's task (radblur_jax/train/tasks) decides what goes in the optional parts.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax


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
    `params["exit_head"]` (None without an exit-head phase); `lr` maps a step to the main
    learning rate."""
    main: optax.GradientTransformation
    exit: optax.GradientTransformation | None
    lr: Any


def create_state(params: Any, optimizers: Optimizers, rng: jax.Array, *,
                 teacher: Any = None) -> TrainState:
    """A fresh state at step 0 around `params` (traceable: jit it with out_shardings); the exit
    optimiser's state when `optimizers.exit` is set; `teacher` kept as given."""
    exit_state = (optimizers.exit.init(params["exit_head"])
                  if optimizers.exit is not None else None)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizers.main.init(params),
                      ema_params=jax.tree.map(jnp.copy, params),
                      rng=jax.random.key_data(rng), exit_opt_state=exit_state, teacher=teacher)
