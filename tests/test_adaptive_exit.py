"""Adaptive exit as an inference mode: one encoder pass, only the sub-decoders the exit head asks
for, per image and per window.

The exit head is steered (`steered_params`: zero kernel, a peaked bias), so the test knows which
depth it picks; a stand-in step checks the early-exit loop exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.eval import inference as inf
from radblur_jax.eval.adaptive_exit import steered_params
from radblur_jax.models.radblur import RADBlur, exit_depth
from radblur_jax.models.reversible import early_exit_forward


def test_exit_depth_ints_and_arrays():
    want = [8, 7, 6, 4, 3, 2]
    assert [exit_depth(c, 8, 6) for c in range(6)] == want
    got = jax.jit(lambda c: exit_depth(c, 8, 6))(jnp.arange(6))
    assert got.dtype == jnp.int32 and got.tolist() == want


def test_early_exit_forward_keeps_each_elements_step_and_stops_at_the_largest():
    calls = []

    def step(p, s, ctx):
        jax.debug.callback(lambda: calls.append(1))
        s = s * p + ctx
        return s, s * 10.0

    params = jnp.asarray([2.0, 3.0, 5.0, 7.0])
    states = jnp.asarray([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    outs = []
    s = states
    for p in params:
        s = s * p + 1.0
        outs.append(s * 10.0)
    exit_steps = jnp.asarray([1, 3, 2])
    got = jax.jit(early_exit_forward, static_argnums=0)(step, params, states, 1.0, exit_steps)
    want = np.stack([outs[n - 1][b] for b, n in enumerate([1, 3, 2])])
    np.testing.assert_array_equal(got, want)
    assert len(calls) == 3  # the 4th step never ran


@pytest.fixture(scope="module")
def tiny():
    from radblur_jax.eval.loading import load_random
    loaded = load_random("tiny")
    return loaded.model, loaded.params


@pytest.mark.slow
def test_adaptive_equals_the_fixed_depth_output(tiny):
    model, params = tiny
    k = model.cfg.decoder.num_sub_decoders
    x = jax.random.uniform(jax.random.key(5), (2, 30, 44, 3))
    full = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    adaptive = jax.jit(lambda p, x: model.apply({"params": p}, x, method=RADBlur.adaptive))
    for exit_class in (0, 5):  # most blurred -> all K; sharpest -> the fewest
        out = adaptive(steered_params(params, exit_class), x)
        n = exit_depth(exit_class, k, 6)
        assert out.steps.tolist() == [n, n] and out.restored.shape == (2, 30, 44, 3)
        assert rel_err(out.restored, full.restored[n - 1]) <= 1e-5
        np.testing.assert_array_equal(out.disparity, full.disparity)
    assert exit_depth(5, k, 6) < k


@pytest.mark.slow
def test_adaptive_windows_blend_like_fixed_depth_windows(tiny):
    model, params = tiny
    params = steered_params(params, 0)
    x = np.random.default_rng(3).random((1, 40, 60, 3)).astype(np.float32)
    tiles = dict(tile=32, overlap=8, tile_batch=2)
    fixed = inf.Restorer(model, params, inf.InferenceOptions(**tiles)).restore(x)
    adaptive = inf.Restorer(model, params, inf.InferenceOptions(**tiles, adaptive=True)).restore(x)
    k = model.cfg.decoder.num_sub_decoders
    windows = len(inf.window_starts(40, 32, 8)) * len(inf.window_starts(60, 32, 8))
    assert adaptive.steps.shape == (1, windows) and (adaptive.steps == k).all()
    assert (fixed.steps == k).all()
    assert rel_err(adaptive.restored, fixed.restored) <= 1e-5
    np.testing.assert_array_equal(adaptive.disparity, fixed.disparity)
