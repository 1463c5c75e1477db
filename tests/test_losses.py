"""Stage-B losses: values against hand-computed numbers."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from radblur_jax.train import losses


def test_psnr_loss():
    sharp = jnp.zeros((2, 4, 6, 3))
    pred = sharp.at[0].set(0.1).at[1].set(0.01)
    np.testing.assert_allclose(losses.psnr_loss(pred, sharp), -30.0, rtol=1e-4)


def test_fft_l1_of_constant_offset():
    # rfft2 of a constant c over an 4x6 image: one DC coefficient c*24, the rest 0.
    pred, sharp = jnp.full((1, 4, 6, 3), 0.5), jnp.zeros((1, 4, 6, 3))
    expected = 0.5 * (0.5 * 24 / (4 * 4)) + 0.0  # real part mean over 4*(6//2+1) bins
    np.testing.assert_allclose(losses.fft_l1(pred, sharp), expected, rtol=1e-6)


@pytest.mark.parametrize("pixel", ["l1", "psnr"])
def test_deblur_loss_averages_outputs(pixel):
    rng = np.random.default_rng(0)
    sharp = jnp.asarray(rng.uniform(size=(2, 8, 10, 3)), jnp.float32)
    restored = jnp.stack([sharp + 0.1, sharp - 0.3])
    got = losses.deblur_loss(restored, sharp, pixel=pixel)
    if pixel == "l1":
        # constant offsets d: L1 = |d|, FFT: DC bin |d|*80 over 8*6 bins, real part only.
        per = [d + 0.01 * 0.5 * d * 80 / 48 for d in (0.1, 0.3)]
    else:
        per = [10 * np.log10(d * d + 1e-8) + 0.01 * 0.5 * d * 80 / 48 for d in (0.1, 0.3)]
    np.testing.assert_allclose(got, np.mean(per), rtol=1e-5)
    assert float(losses.deblur_loss(jnp.stack([sharp]), sharp, pixel="l1")) == 0.0


def test_exit_labels_bins():
    sharp = jnp.zeros((6, 4, 4, 3))
    # PSNR 10, 22, 27, 32, 37, 45 dB -> classes 0..5
    offsets = [10 ** (-p / 20) for p in (10, 22, 27, 32, 37, 45)]
    blurry = sharp + jnp.asarray(offsets)[:, None, None, None]
    np.testing.assert_array_equal(losses.exit_labels(blurry, sharp), [0, 1, 2, 3, 4, 5])


def test_exit_cross_entropy():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    got = losses.exit_cross_entropy(logits, jnp.asarray([0, 2]))
    np.testing.assert_allclose(got, -(np.log(0.5) + np.log(0.8)) / 2, rtol=1e-6)
