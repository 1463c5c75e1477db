"""The lean accelerator formulation (`conv_impl="lax"`, reversible decoder) has the gradients
of the formulation it replaced, computed here by plain autodiff: `lax.conv_general_dilated`
on concatenated channels for every convolution (then split), flax's LayerNorm formula and the
FFT branch channels-last; and of the CPU's `fast` forms. One lean gradient serves both
comparisons (a whole-network gradient costs tens of seconds of compile). The formulations, the
draw of params and images and the errors are `benchmarks/lean_gradients.py`'s, which gives the
same comparison for the larger presets."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from lean_gradients import PARTS, build_forms, compare, draw, gradient_fn, near_kinks  # noqa: E402


@pytest.mark.slow
def test_tiny_gradients_agree_across_formulations():
    """The `tiny` RADBlur's loss gradient (stem, ViT patch embedding, DPT, ADA, decoder) three
    ways, from one lean `lax` gradient: the lean step (reversible decoder) equals the
    pre-lean formulation by plain autodiff, and the CPU's `fast` forms (reversible) equal the
    lean step in outputs and gradients. (Reversible backprop equals autodiff with the fast
    forms: test_reversible.py.)"""
    models = build_forms("tiny")
    assert models["lean"].backend.spectral_channels_first
    # Non-square, padded inside to 48x64 (decoder) and 56x70 (ViT); the init moved so that the
    # residual scales that start at zero count.
    params, (blurry, sharp) = draw(models["lean"], 0, 40, 56)
    abstract = jax.eval_shape(models["reference, autodiff"].init, jax.random.key(0), blurry)
    assert jax.tree.map(jnp.shape, abstract["params"]) == jax.tree.map(jnp.shape, params)
    lean = jax.device_get(gradient_fn(models["lean"])(params, blurry, sharp))
    # No L1 term at its kink, where rounding alone would pick the sign of its gradient.
    assert near_kinks(lean[0][1].restored, sharp) == 0
    for other in ("reference, autodiff", "fast"):
        want = jax.device_get(gradient_fn(models[other])(params, blurry, sharp))
        err = compare(lean, want)
        assert err["outputs"] <= 1e-5 and err["loss"] <= 1e-6, (other, err)
        assert err["gradient"] <= 1e-5, (other, err)
        for part in PARTS:
            assert err[f"{part}_norm"] > 0.0, (other, part)
            assert err[part] <= 1e-5, (other, part, err)
