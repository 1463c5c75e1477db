"""bfloat16 compute trains like float32: the tiny deblur recipe's train step, 50 steps on the
built-in synthetic set (batch 4, 32 px crops), once with `model.dtype = "float32"` and once with
`"bfloat16"`, same seed, same initial params, same batches. Params, optimiser state and the
reversible decoder's states stay float32 either way (the presets' accelerator recipes train in
bf16: `configs/deblur.py`). The bf16 run's loss stays close to float32's step by step and falls
as far.

The step is built as the training loop builds it (its shardings on a one-device mesh), so the
float32 gradient program is the one `test_train_deblur_learns.py`'s run compiles (same model,
batch and crop): the two modules share an xdist group, and the second loads it from the
compilation cache.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import load_config

from radblur_jax.train import input as input_lib
from radblur_jax.train import sharding
from radblur_jax.train.tasks import make_task

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_deblur_runs")]

STEPS = 50
SMOOTH = 5  # steps per window of the smoothed loss


def _config(dtype: str):
    c = load_config("deblur.py", "tiny")
    c.model.dtype = dtype
    c.train.batch_size = 4
    c.input.crop_size = 32
    return c


def _losses(dtype: str, params, batches: list[dict]) -> np.ndarray:
    config = _config(dtype)
    task = make_task(config)
    params = jax.tree.map(jnp.array, params)  # a copy: the step donates the state
    optimizers = task.make_optimizers(params)
    state = task.create_state(params, optimizers, jax.random.key(1))
    shardings = sharding.step_shardings(state, sharding.make_mesh(config.mesh), config)
    state = jax.device_put(state, shardings.state)
    # Split at the gradient (as training compiles it on the CPU): the update program is the
    # same for both dtypes (float32 params and optimiser state), so the second run loads it.
    step = task.train_step(optimizers, split=True, shardings=shardings)
    losses = []
    for batch in batches:
        state, metrics = step(state, jax.device_put(batch, shardings.batch))
        losses.append(float(metrics["loss"]))
    return np.array(losses)


@pytest.fixture(scope="module")
def runs():
    it = input_lib.train_iterator(_config("float32"), ("blur", "sharp"), 0, 1)
    batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in itertools.islice(it, STEPS)]
    # One init for both runs: the params are float32 whatever the compute dtype.
    params = make_task(_config("float32")).load_initial_params(jax.random.key(0))
    return {d: _losses(d, params, batches) for d in ("float32", "bfloat16")}


def _smoothed(loss: np.ndarray) -> np.ndarray:
    return loss.reshape(-1, SMOOTH).mean(axis=1)


def test_bf16_loss_tracks_float32(runs):
    f32, bf16 = runs["float32"], runs["bfloat16"]
    assert np.all(np.isfinite(bf16)), bf16
    per_step = np.abs(bf16 - f32) / f32
    smooth = np.abs(_smoothed(bf16) - _smoothed(f32)) / _smoothed(f32)
    assert per_step.max() > 1e-4, per_step  # bf16 is in effect: the losses differ
    # Bounds ~5x the largest gaps measured on a CPU (same batches, so batch noise cancels; a
    # drifting bf16 inversion or a lost float32 cast shows as a growing gap).
    assert per_step.max() < 0.02, per_step
    assert smooth.max() < 0.01, smooth
    # Both learn (the loss falls to about a seventh), bf16 as far as float32.
    assert f32[-10:].mean() < 0.25 * f32[:SMOOTH].mean(), f32
    assert bf16[-10:].mean() < 0.25 * bf16[:SMOOTH].mean(), bf16
    assert bf16[-10:].mean() < 1.05 * f32[-10:].mean(), (bf16, f32)
