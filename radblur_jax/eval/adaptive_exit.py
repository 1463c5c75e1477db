"""Adaptive exit at inference: the exit head picks how many sub-decoders an image needs.

    restored, n = deblur_adaptive(model, params, blurry)     # blurry (1, H, W, 3) in [0, 1]

The jitted functions are built once per model (`AdaptiveExit`, cached by `deblur_adaptive`), so
repeated calls compile once per input shape and exit depth, not once per call.
"""
from __future__ import annotations

import collections
import math
from typing import Any

import jax
import jax.numpy as jnp

from radblur_jax.models.radblur import RADBlur

_CACHE_SIZE = 8


def exit_depth(exit_class: int, num_sub_decoders: int, num_classes: int) -> int:
    """Sub-decoders to run for a blur class (0 = most blurred -> all K; the sharpest -> fewest)."""
    share = (num_classes - int(exit_class)) / num_classes
    return max(1, min(num_sub_decoders, int(math.ceil(num_sub_decoders * share))))


class AdaptiveExit:
    """Adaptive-exit inference for one model; its jitted functions live as long as it does."""

    def __init__(self, model: RADBlur):
        self.model = model
        self._logits = jax.jit(
            lambda p, x: model.apply({"params": p}, x, method=RADBlur.exit_logits))
        self._restore = jax.jit(
            lambda p, x, n: model.apply({"params": p}, x, num_active=n).restored[-1],
            static_argnums=2)

    def num_sub_decoders(self, params: Any, blurry: jax.Array) -> int:
        """How many sub-decoders the exit head asks for, for `blurry (1, H, W, 3)`."""
        logits = self._logits(params, blurry)
        return exit_depth(int(jnp.argmax(logits[0])), self.model.cfg.decoder.num_sub_decoders,
                          logits.shape[-1])

    def __call__(self, params: Any, blurry: jax.Array) -> tuple[jax.Array, int]:
        """`(restored (1, H, W, 3) float32, n)` for one image (or window) `(1, H, W, 3)`.

        The encoder runs twice (once for the exit logits, once inside the n-step forward).
        """
        if blurry.ndim != 4 or blurry.shape[0] != 1:
            raise ValueError(f"deblur_adaptive: expected one image (1, H, W, 3), got "
                             f"{blurry.shape}")
        n = self.num_sub_decoders(params, blurry)
        return self._restore(params, blurry, n), n


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
    sub-decoders run; returns `(restored (1, H, W, 3), n)`. Compiles once per model, shape, n."""
    return adaptive_exit_for(model)(params, blurry)
