"""models/striped.py: the NAF block over bands of rows equals the whole-image block."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.eval.inference import InferenceOptions, restore_fn
from radblur_jax.eval.loading import sampled_params
from radblur_jax.models import backends
from radblur_jax.models.blocks import NAFBlock
from radblur_jax.models.radblur import build_radblur
from radblur_jax.models.striped import stripe_rows


def test_stripe_rows_tile_the_map_or_stay_whole():
    assert stripe_rows(720, 24) == 24
    assert stripe_rows(180, 24) == 20  # the largest divisor not above the target
    assert stripe_rows(90, 24) == 0  # under four bands tall: whole
    assert stripe_rows(97, 24) == 0  # a prime height has no band size near the target
    assert stripe_rows(720, 0) == 0
    for h in (96, 144, 368, 720):
        rows = stripe_rows(h, 24)
        assert rows and h % rows == 0 and 12 <= rows <= 24


@pytest.mark.parametrize("fft", [False, True])
def test_striped_block_equals_whole_block(fft):
    """Batch 2, non-square, bands of 8 rows: same output to float rounding; the first and
    last bands see the zero padding of the depthwise conv, the mean spans every band."""
    whole = NAFBlock(fft=fft, backend=backends.FAST)
    striped = NAFBlock(fft=fft, backend=dataclasses.replace(backends.FAST, stripe_rows=8))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 48, 40, 8), dtype=np.float32))
    params = whole.init(jax.random.key(1), x)["params"]
    # Non-zero beta, gamma and biases, so every part of the block reaches the output.
    params = jax.tree_util.tree_map(
        lambda a: a + jnp.asarray(rng.standard_normal(a.shape, dtype=np.float32)) * 0.3, params)
    ref = whole.apply({"params": params}, x)
    out = jax.jit(lambda p, x: striped.apply({"params": p}, x))(params, x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-6
    assert rel_err(out, x) > 0.1  # the block changed its input


def test_inference_backend_stripes_fast_only():
    forward_only = backends.inference_backend(backends.FAST)
    assert forward_only.stripe_rows == backends.INFERENCE_STRIPE_ROWS > 0
    assert forward_only.spectral_channels_first
    assert forward_only.conv is backends.FAST.conv
    assert backends.inference_backend(backends.LAX) is backends.LAX
    assert backends.FAST.stripe_rows == 0  # training never stripes


def test_restore_fn_striped_equals_model_forward():
    """RADBlur-tiny at 192x128 through `restore_fn` (the finest levels striped) against the
    model's own whole-image forward: rel. err. <= 1e-5."""
    model = build_radblur("tiny").clone(backend=backends.FAST)
    params = sampled_params(model, 0)
    x = jnp.asarray(np.random.default_rng(2).random((1, 192, 128, 3), dtype=np.float32))
    restore = restore_fn(model, InferenceOptions())
    whole = lambda p, x: model.apply({"params": p}, x).restored[-1]  # noqa: E731
    loops = [str(jax.make_jaxpr(f)(params, x)).count(" scan[") for f in (restore, whole)]
    assert loops[0] > loops[1]  # the band loops are there
    restored, _ = jax.jit(restore)(params, x)
    ref = jax.jit(whole)(params, x)
    assert rel_err(restored, ref) <= 1e-5
    assert rel_err(ref, x) > 1e-3
