"""`param`: a Flax parameter of known shape, without re-tracing its initializer on every use.

When a parameter exists (every `apply`), `nn.Module.param` checks its shape by tracing the
initializer under `jax.eval_shape`: for a `lecun_normal` conv kernel that is a truncated-normal
sampler traced per access. `param` compares the stored shape with the one given instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def param(module: nn.Module, name: str, init_fn: Callable, shape: Sequence[int],
          dtype: Any = jnp.float32) -> jax.Array:
    """`module.param(name, init_fn, shape, dtype)`; an existing parameter is returned after a
    direct shape check (ValueError naming its path, the stored and the expected shape)."""
    if not module.has_variable("params", name):
        return module.param(name, init_fn, tuple(shape), dtype)
    value = nn.meta.unbox(module.get_variable("params", name))
    if tuple(value.shape) != tuple(shape):
        path = "/".join(module.scope.path + (name,))
        raise ValueError(f"parameter {path}: shape {tuple(value.shape)} in the params, expected "
                         f"{tuple(shape)} from the module's config")
    return value
