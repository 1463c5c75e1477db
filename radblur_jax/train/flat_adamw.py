"""AdamW with its moments in one flat vector: a few kernels for the update, not a few per leaf.

The per-leaf optax chain (`optimizer.make_optimizer` with `optimizer.layout="per_leaf"`)
compiles each of the model's ~500 leaves into its own multi-output kernel (clip, two moments,
bias correction, decay, lr): on a GPU that is hundreds of kernels through LLVM and `ptxas`,
the largest single part of the update program's compile. Here the gradients are raveled into
one vector, clipped, and the moments `mu`, `nu` `(N,)` float32 (N trainable elements, leaves in
tree order) are updated in one pass; only the final `-lr * scale * (u + wd * p)` is per leaf,
a slice of `u` fused with the parameter update. Same maths as the chain

    clip_by_global_norm -> scale_by_adam -> add_decayed_weights(mask) -> * -lr(count) -> * scale

with per-leaf weight-decay mask and lr scale given as functions of the leaf's '/'-joined path.
Frozen leaves are not its business: `optax.multi_transform` hands it the trainable subtree
(frozen leaves are empty `MaskedNode`s, which have no leaves). Not `optax.flatten(chain)`:
that hands the chain one vector, so the per-leaf mask and scale would have to become
parameter-sized vectors, and it ravels the parameters and unravels the updates every step
besides. The moments are one vector, so they cannot be sharded like each parameter: the
recipes that shard parameters over `fsdp` keep the per-leaf chain.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree


class FlatAdamWState(NamedTuple):
    """count `()` int32 (updates applied); mu, nu `(N,)` float32: Adam's moments of the
    trainable leaves, raveled in tree order."""
    count: jax.Array
    mu: jax.Array
    nu: jax.Array


def flat_adamw(learning_rate: optax.Schedule, *, b1: float, b2: float, eps: float,
               weight_decay: float, decay_mask: Callable[[str], bool],
               lr_scale: Callable[[str], float], clip_norm: float,
               path_str: Callable[[tuple], str]) -> optax.GradientTransformation:
    """AdamW over one flat vector (see the module docstring). `decay_mask(path)`: whether the
    leaf at `path` is decayed; `lr_scale(path)`: its lr multiplier; `clip_norm` 0 = no clip;
    `path_str` turns a key path into the '/'-joined path the two functions take."""

    def init(params: Any) -> FlatAdamWState:
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        # Two arrays, not one twice: a donated state must not hold the same buffer twice.
        return FlatAdamWState(jnp.zeros((), jnp.int32), jnp.zeros((n,), jnp.float32),
                              jnp.zeros((n,), jnp.float32))

    def update(grads: Any, state: FlatAdamWState, params: Any = None
               ) -> tuple[Any, FlatAdamWState]:
        if params is None:
            raise ValueError("flat_adamw: update needs params (for the weight decay)")
        g = ravel_pytree(grads)[0]
        if clip_norm > 0:
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))  # the trainable leaves' global norm
            g = jnp.where(norm < clip_norm, g, g / norm * clip_norm)
        mu = (1 - b1) * g + b1 * state.mu
        nu = (1 - b2) * jnp.square(g) + b2 * state.nu
        count = optax.safe_increment(state.count)
        u = (mu / (1 - b1 ** count)) / (jnp.sqrt(nu / (1 - b2 ** count)) + eps)
        lr = learning_rate(state.count)
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(grads)
        out, offset = [], 0
        for (path, leaf), p in zip(with_paths, jax.tree.leaves(params)):
            name, size = path_str(path), int(np.prod(leaf.shape))
            step = u[offset:offset + size].reshape(leaf.shape)
            offset += size
            if weight_decay > 0 and decay_mask(name):
                step = step + weight_decay * p
            out.append(((step * -lr) * lr_scale(name)).astype(leaf.dtype))
        return jax.tree.unflatten(treedef, out), FlatAdamWState(count, mu, nu)

    return optax.GradientTransformation(init, update)
