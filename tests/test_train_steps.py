"""The tasks' train steps on the tiny model (slow: compiles the RADBlur train step)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import load_config

from radblur_jax.train import split_step, steps
from radblur_jax.train.tasks import make_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    config = load_config("deblur.py", "tiny")
    config.loss.distill_weight = 0.5
    config.exit.steps, config.train.num_steps, config.optimizer.warmup_steps = 2, 4, 1
    task = make_task(config)
    params = task.load_initial_params(jax.random.key(0))
    optimizers = task.make_optimizers(params)
    state = task.create_state(params, optimizers, jax.random.key(1))
    rng = np.random.default_rng(0)
    sharp = rng.random((2, 20, 24, 3), dtype=np.float32)
    blur = np.clip(sharp + 0.1 * rng.standard_normal(sharp.shape, dtype=np.float32), 0, 1)
    return config, task, optimizers, state, {"blur": jnp.asarray(blur),
                                             "sharp": jnp.asarray(sharp)}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)  # the train steps donate their input state


def test_deblur_step_with_distillation(setup):
    config, task, optimizers, state, batch = setup
    step = task.train_step(optimizers, split=False)
    new, m = step(_copy(state), batch)
    new, m = step(new, batch)  # step 0 has lr 0 (warmup)
    assert int(new.step) == 2
    assert np.isfinite(float(m["loss"])) and float(m["distill_loss"]) > 0
    np.testing.assert_allclose(float(m["loss"]),
                               float(m["pixel_loss"]) + 0.5 * float(m["distill_loss"]),
                               rtol=1e-6)
    for a, b in zip(_leaves(new.teacher), _leaves(state.teacher)):  # the teacher is frozen
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in
             zip(_leaves(new.params["depth"]), _leaves(state.params["depth"]))]
    assert any(moved)
    for a, b in zip(_leaves(new.params["exit_head"]), _leaves(state.params["exit_head"])):
        np.testing.assert_array_equal(a, b)  # frozen in the main phase (optimizer.freeze)


def test_exit_phase_changes_only_the_exit_head(setup):
    _, task, optimizers, state, batch = setup
    (phase,) = task.extra_phases(optimizers)
    assert phase.name == "exit_head" and phase.num_steps == 2
    new, m = split_step.jit_step(phase.step)(_copy(state), batch)
    assert np.isfinite(float(m["loss"])) and 0 <= float(m["exit_accuracy"]) <= 1
    changed = {k: any(not np.array_equal(a, b) for a, b in
                      zip(_leaves(new.params[k]), _leaves(state.params[k])))
               for k in state.params}
    assert changed.pop("exit_head") and not any(changed.values()), changed
    for a, b in zip(_leaves(new.ema_params["exit_head"]), _leaves(new.params["exit_head"])):
        np.testing.assert_array_equal(a, b)


def test_normalized_disparity_is_scale_and_shift_invariant():
    d = jnp.asarray(np.random.default_rng(1).random((2, 5, 7)), jnp.float32)
    np.testing.assert_allclose(steps.normalized_disparity(3.0 * d + 2.0),
                               steps.normalized_disparity(d), atol=1e-5)
