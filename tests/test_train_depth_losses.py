"""Tests for radblur_jax/train/depth_losses.py."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radblur_jax.train import depth_losses as dl

B, H, W = 3, 29, 41  # non-square, odd sizes (strides 2, 4, 8 leave ragged edges)

depth_loss = jax.jit(dl.depth_loss, static_argnames=("grad_weight", "scales"))
ssi_loss = jax.jit(dl.ssi_loss)
grad_loss = jax.jit(dl.gradient_matching_loss, static_argnames=("scales",))


@pytest.fixture
def scene():
    """GT depth `(B, H, W, 1)` in [1, 20] m, a valid mask with ~25% holes, GT disparity
    `(B, H, W)` (multiples of 2**-12, so that `a * disp + b` is exact in float32 for the
    test's a, b), and a noisy prediction."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    smooth = np.stack([0.5 + 0.5 * np.sin(3 * xx + b) * np.cos(2 * yy - b) for b in range(B)])
    disp = (np.round((0.05 + 0.95 * smooth ** 2) * 4096) / 4096).astype(np.float32)
    valid = rng.random((B, H, W, 1)) > 0.25
    depth = (1.0 / disp)[..., None].astype(np.float32)
    disp = np.where(valid[..., 0], disp, 0.0).astype(np.float32)
    noisy = (disp + 0.2 * disp.std() * rng.standard_normal(disp.shape)).astype(np.float32)
    return depth, valid, disp, noisy


def _reference(pred, gt_disp, valid, grad_weight=0.5, scales=4):
    """NumPy float64 MiDaS loss: normalise GT, lstsq-align pred, MAE + gradient matching."""
    pred, gt, m = (np.asarray(x, np.float64) for x in (pred, gt_disp, valid))
    r = np.zeros_like(pred)
    for b in range(pred.shape[0]):
        v = m[b] > 0
        if not v.any():
            continue
        t = gt[b][v]
        t = (t - t.mean()) / np.abs(t - t.mean()).mean()
        a = np.stack([pred[b][v], np.ones(v.sum())], 1)
        (s, c), *_ = np.linalg.lstsq(a, t, rcond=None)
        r[b][v] = s * pred[b][v] + c - t
    ssi = np.abs(r).sum() / m.sum()
    grad = 0.0
    for k in range(scales):
        rs, ms = r[:, ::2 ** k, ::2 ** k], m[:, ::2 ** k, ::2 ** k]
        gx = np.abs(np.diff(rs, axis=2)) * ms[:, :, 1:] * ms[:, :, :-1]
        gy = np.abs(np.diff(rs, axis=1)) * ms[:, 1:] * ms[:, :-1]
        grad += (gx.sum() + gy.sum()) / ms.sum()
    return ssi + grad_weight * grad, ssi, grad


def test_depth_to_disparity():
    depth = jnp.asarray([[[2.0, 0.0], [4.0, 8.0]]])[..., None]
    valid = jnp.asarray([[[True, True], [False, True]]])[..., None]
    out = dl.depth_to_disparity(depth, valid)
    assert out.shape == depth.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out)[0, ..., 0], [[0.5, 0.0], [0.0, 0.125]])


def test_align_scale_shift_matches_lstsq(scene):
    _, valid, disp, noisy = scene
    rng = np.random.default_rng(1)
    pred = (3.0 * noisy + 7.0 + rng.standard_normal(noisy.shape)).astype(np.float32)
    scale, shift = jax.jit(dl.align_scale_shift)(pred, disp, valid)
    assert scale.shape == shift.shape == (B,)
    for b in range(B):
        v = valid[b, ..., 0]
        a = np.stack([pred[b][v], np.ones(v.sum())], 1).astype(np.float64)
        want, *_ = np.linalg.lstsq(a, disp[b][v].astype(np.float64), rcond=None)
        got = np.array([scale[b], shift[b]])
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5


def test_align_degenerate_images():
    pred = jnp.stack([jnp.ones((H, W)), jnp.full((H, W), 5.0)])
    target = jnp.stack([jnp.arange(H * W, dtype=jnp.float32).reshape(H, W)] * 2)
    valid = jnp.stack([jnp.zeros((H, W), bool), jnp.ones((H, W), bool)])
    scale, shift = dl.align_scale_shift(pred, target, valid)
    np.testing.assert_array_equal(np.asarray(scale), [0.0, 0.0])  # empty mask; constant pred
    np.testing.assert_allclose(np.asarray(shift), [0.0, float(target[1].mean())], rtol=1e-6)


@pytest.mark.parametrize("a,b", [(2.5, 0.375), (0.0625, -4.0), (40.0, 100.0)])
def test_loss_is_zero_for_affine_prediction(scene, a, b):
    depth, valid, disp, _ = scene
    pred = a * disp + b
    assert float(depth_loss(pred, depth, valid)) < 1e-6
    assert float(depth_loss(pred, depth[..., 0], valid[..., 0])) < 1e-6  # (B, H, W) inputs
    assert float(grad_loss(pred, disp, valid)) < 1e-6


def test_matches_numpy_reference(scene):
    depth, valid, disp, noisy = scene
    valid = valid.copy()
    valid[1, :H // 2] = False  # images with very different valid counts
    total, ssi, grad = _reference(noisy, np.where(valid[..., 0], 1 / depth[..., 0], 0),
                                  valid[..., 0], grad_weight=0.3, scales=3)
    got = float(depth_loss(noisy, depth, valid, grad_weight=0.3, scales=3))
    assert abs(got - total) / total < 1e-5
    d = dl.depth_to_disparity(depth, valid)
    assert abs(float(ssi_loss(noisy, d, valid)) - ssi) / ssi < 1e-5
    assert abs(float(grad_loss(noisy, d, valid, scales=3)) - grad) / grad < 1e-5
    assert grad > 0 and ssi > 0


def test_invariant_to_scale_and_shift(scene):
    depth, valid, disp, noisy = scene
    base = float(depth_loss(noisy, depth, valid))
    assert base > 1e-3
    assert abs(float(depth_loss(0.01 * noisy - 3.0, depth, valid)) - base) / base < 1e-4
    assert abs(float(depth_loss(noisy, 7.0 * depth, valid)) - base) / base < 1e-4  # GT units


def test_invalid_pixels_are_ignored(scene):
    depth, valid, _, noisy = scene
    rng = np.random.default_rng(2)
    inv = ~valid
    pred2 = np.where(inv[..., 0], rng.standard_normal(noisy.shape) * 1e3, noisy).astype(np.float32)
    pred2[inv[..., 0] & (rng.random(noisy.shape) < 0.3)] = np.nan
    depth2 = np.where(inv, rng.random(depth.shape) * 50, depth).astype(np.float32)
    depth2[inv & (rng.random(depth.shape) < 0.3)] = np.inf
    base = float(depth_loss(noisy, depth, valid))
    assert abs(float(depth_loss(pred2, depth2, valid)) - base) <= 1e-6 * base
    g = jax.grad(dl.depth_loss)(jnp.asarray(pred2), depth2, valid)
    assert np.all(np.isfinite(g))
    assert np.all(np.asarray(g)[inv[..., 0]] == 0)
    assert np.any(np.asarray(g)[valid[..., 0]] != 0)
    # Non-positive depth counts as invalid even where the mask says valid.
    depth3 = depth.copy()
    depth3[0, 0, 0, 0] = 0.0
    valid3 = valid.copy()
    valid3[0, 0, 0, 0] = False
    assert float(depth_loss(noisy, depth3, valid)) == pytest.approx(
        float(depth_loss(noisy, depth, valid3)), rel=1e-6)


def test_gradient_matching_sees_noise_but_not_affine(scene):
    _, valid, disp, noisy = scene
    assert float(grad_loss(2 * disp + 1, disp, valid)) < 1e-6
    one = float(grad_loss(noisy, disp, valid, scales=1))
    four = float(grad_loss(noisy, disp, valid, scales=4))
    assert one > 0.1 and four > one  # every scale adds a positive term


def test_all_invalid_image_keeps_gradients_finite(scene):
    depth, valid, _, noisy = scene
    valid = valid.copy()
    valid[0] = False
    loss, g = jax.jit(jax.value_and_grad(dl.depth_loss))(jnp.asarray(noisy), depth, valid)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(g))
    assert np.all(np.asarray(g)[0] == 0)
    none = np.zeros_like(valid)
    loss, g = jax.value_and_grad(dl.depth_loss)(jnp.asarray(noisy), depth, none)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0)
    const = jnp.ones_like(noisy)  # degenerate alignment: constant prediction
    loss, g = jax.value_and_grad(dl.depth_loss)(const, depth, valid)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(g))


def test_bfloat16_prediction_computes_in_float32(scene):
    depth, valid, _, noisy = scene
    pred16 = jnp.asarray(noisy, jnp.bfloat16)
    out = depth_loss(pred16, depth, valid)
    assert out.dtype == jnp.float32
    ref = float(depth_loss(pred16.astype(jnp.float32), depth, valid))
    assert float(out) == pytest.approx(ref, rel=1e-6)


def test_real_stereo_disparity():
    """Middlebury disparity shipped with scikit-image (inf = no match)."""
    import skimage
    path = os.path.join(os.path.dirname(skimage.__file__), "data", "motorcycle_disp.npz")
    disp = np.load(path)["arr_0"][::4, ::4][None]  # (1, 125, 186)
    valid = np.isfinite(disp) & (disp > 0)
    depth = np.where(valid, 1.0 / np.where(valid, disp, 1.0), 0.0).astype(np.float32)
    affine = np.where(valid, 0.05 * disp + 2.0, 0.0).astype(np.float32)
    assert float(depth_loss(affine, depth, valid)) < 1e-5
    smooth = np.where(valid, np.sqrt(np.where(valid, disp, 0.0)), 0.0).astype(np.float32)
    assert float(depth_loss(smooth, depth, valid)) > 1e-3  # not affine in disparity
