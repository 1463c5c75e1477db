"""Adaptive exit at inference, one image at a time: the exit head picks how many sub-decoders an
image needs.

    restored, n = deblur_adaptive(model, params, blurry)     # blurry (1, H, W, 3) in [0, 1]

The encoder and the exit logits run once, then only the n sub-decoders the head asks for
(`RADBlur.adaptive`). Batches, sliding windows (each window picks its own n) and self-ensemble
go through `eval.inference` with `InferenceOptions(adaptive=True)`. The jitted function is built
once per model (`AdaptiveExit`, cached by `deblur_adaptive`), so repeated calls compile once per
input shape.
"""
from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp

from radblur_jax.models.radblur import RADBlur, exit_depth

__all__ = ["AdaptiveExit", "adaptive_exit_for", "deblur_adaptive", "exit_depth",
           "steered_params"]

_CACHE_SIZE = 8


class AdaptiveExit:
    """Adaptive-exit inference for one model; its jitted function lives as long as it does."""

    def __init__(self, model: RADBlur):
        self.model = model
        self._adaptive = jax.jit(
            lambda p, x: model.apply({"params": p}, x, method=RADBlur.adaptive))

    def num_sub_decoders(self, params: Any, blurry: jax.Array) -> int:
        """How many sub-decoders the exit head asks for, for `blurry (1, H, W, 3)`."""
        return self(params, blurry)[1]

    def __call__(self, params: Any, blurry: jax.Array) -> tuple[jax.Array, int]:
        """`(restored (1, H, W, 3) float32, n)` for one image (or window) `(1, H, W, 3)`."""
        if blurry.ndim != 4 or blurry.shape[0] != 1:
            raise ValueError(f"deblur_adaptive: expected one image (1, H, W, 3), got "
                             f"{blurry.shape}")
        out = self._adaptive(params, blurry)
        return out.restored, int(out.steps[0])


_instances: collections.OrderedDict[int, AdaptiveExit] = collections.OrderedDict()


def adaptive_exit_for(model: RADBlur) -> AdaptiveExit:
    """The cached `AdaptiveExit` of `model` (the last few models are kept)."""
    runner = _instances.get(id(model))
    if runner is None or runner.model is not model:
        runner = AdaptiveExit(model)
        _instances[id(model)] = runner
        while len(_instances) > _CACHE_SIZE:
            _instances.popitem(last=False)
    _instances.move_to_end(id(model))
    return runner


def deblur_adaptive(model: RADBlur, params: Any, blurry: jax.Array) -> tuple[jax.Array, int]:
    """Adaptive exit for one image (or window) `(1, H, W, 3)`: the exit head picks how many
    sub-decoders run; returns `(restored (1, H, W, 3), n)`. Compiles once per model and shape."""
    return adaptive_exit_for(model)(params, blurry)


def steered_params(params: Any, exit_class: int) -> Any:
    """`params` with the exit head's last layer replaced so that it picks `exit_class` for any
    input (zero kernel, a bias peaked at the class): a known exit depth for tests and speed
    measurements; everything else unchanged."""
    head = params["exit_head"]["fc2"]
    bias = jnp.zeros_like(head["bias"]).at[exit_class].set(10.0)
    fc2 = {"kernel": jnp.zeros_like(head["kernel"]), "bias": bias}
    return {**params, "exit_head": {**params["exit_head"], "fc2": fc2}}
