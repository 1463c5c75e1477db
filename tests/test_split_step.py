"""SplitStep: the train step as two executables equals the one-program step."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from radblur_jax.train import split_step, steps
from radblur_jax.train.state import Optimizers, TrainState


def _problem():
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
                        "bias": jnp.zeros((3,), jnp.float32)}}
    optimizers = Optimizers(optax.adamw(1e-2, weight_decay=0.1), None, lambda step: 1e-2)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizers.main.init(params),
                       ema_params=jax.tree.map(jnp.copy, params),
                       rng=jnp.zeros((2,), jnp.uint32))
    batch = {"x": jnp.asarray(rng.standard_normal((8, 5)), jnp.float32),
             "y": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)}

    def gradients(state, batch):
        def loss_fn(p):
            pred = batch["x"] @ p["dense"]["kernel"] + p["dense"]["bias"]
            return jnp.mean((pred - batch["y"]) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return grads, {"loss": loss}

    update = functools.partial(steps.apply_gradients, optimizers=optimizers, ema_decay=0.9)
    return state, batch, gradients, update


def test_split_step_equals_one_program():
    state, batch, gradients, update = _problem()
    one = jax.jit(functools.partial(split_step.compose, gradients, update))
    want, want_metrics = state, []
    for _ in range(3):
        want, m = one(want, batch)
        want_metrics.append(m)
    step = split_step.SplitStep(gradients, update)
    got = jax.tree.map(jnp.copy, state)  # the split step donates its input state
    for m_want in want_metrics:
        got, m = step(got, batch)
        assert sorted(m) == sorted(m_want) == ["grad_norm", "grad_norm/dense", "loss", "lr"]
        for k in m:
            np.testing.assert_allclose(np.asarray(m[k]), np.asarray(m_want[k]), rtol=1e-6)
    assert int(got.step) == 3
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert len(step.executables) == 2


def test_compile_before_the_first_call_and_donation():
    state, batch, gradients, update = _problem()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (state, batch))
    step = split_step.SplitStep(gradients, update).compile(*abstract)
    new, _ = step(state, batch)
    assert int(new.step) == 1
    assert state.params["dense"]["kernel"].is_deleted()  # donated to the update


def test_executables_before_compiling_is_an_error():
    _, _, gradients, update = _problem()
    with pytest.raises(RuntimeError, match="not compiled"):
        _ = split_step.SplitStep(gradients, update).executables


def test_train_step_builds_either_form_from_one_pair():
    state, batch, gradients, update = _problem()
    want, m_want = jax.jit(functools.partial(split_step.compose, gradients, update))(state, batch)
    for split in (False, True):
        step = split_step.train_step(gradients, update, split=split)
        assert isinstance(step, split_step.SplitStep) == split
        got, m = step(jax.tree.map(jnp.copy, state), batch)
        np.testing.assert_allclose(np.asarray(m["loss"]), np.asarray(m_want["loss"]), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_split_step_choice():
    assert split_step.use_split_step("on") and not split_step.use_split_step("off")
    assert split_step.use_split_step("auto") == (jax.default_backend() == "cpu")
    with pytest.raises(ValueError, match="train.split_step='yes'"):
        split_step.use_split_step("yes")


def test_check_config_names_a_bad_split_step():
    from train_helpers import load_config

    from radblur_jax.train.config_base import check_config
    config = load_config("deblur.py", "tiny")
    check_config(config)
    config.train.split_step = "sometimes"
    with pytest.raises(ValueError, match="train.split_step='sometimes'"):
        check_config(config)
