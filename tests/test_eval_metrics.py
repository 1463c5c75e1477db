"""eval.metrics: PSNR/SSIM against scikit-image and an independent 3-D SSIM; depth metrics."""
from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import fftconvolve
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from radblur_jax.eval import metrics

H, W = 300, 440  # non-square crop shared by the photographs

# One compiled function per SSIM form, shared by the tests (same shapes: compiled once).
ssim_3d = jax.jit(lambda p, t: metrics.ssim(p, t, mode="3d"))
ssim_pc = jax.jit(lambda p, t: metrics.ssim(p, t, mode="per_channel"))


@pytest.fixture(scope="module")
def photo_pairs():
    """(gt, degraded) uint8 batches `(3, H, W, 3)`: real photographs, blurred + noisy copies."""
    rng = np.random.default_rng(0)
    gts, degs = [], []
    for name in ("astronaut", "chelsea", "coffee"):
        gt = getattr(data, name)()[:H, :W]
        deg = cv2.GaussianBlur(gt, (0, 0), 2.0).astype(np.float64) + rng.normal(0, 4, gt.shape)
        gts.append(gt)
        degs.append(np.clip(np.round(deg), 0, 255).astype(np.uint8))
    return np.stack(gts), np.stack(degs)


def _ssim_3d_reference(a: np.ndarray, b: np.ndarray) -> float:
    """3-D SSIM as MATLAB's ssim on an RGB volume: 11x11x11 Gaussian, replicate padding, L=255."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    g = cv2.getGaussianKernel(11, 1.5)[:, 0]
    kernel = g[:, None, None] * g[None, :, None] * g[None, None, :]

    def blur(v):
        return fftconvolve(np.pad(v, 5, mode="edge"), kernel, mode="valid")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                       * (var_a + var_b + c2))
    return float(smap.mean())


def _to_unit(u8: np.ndarray) -> jax.Array:
    return metrics.quantize_uint8(jnp.asarray(u8, jnp.float32) / 255.0)


def test_ssim_3d_matches_independent_reference(photo_pairs):
    gt, deg = photo_pairs
    got = np.asarray(ssim_3d(_to_unit(deg), _to_unit(gt)))
    want = np.array([_ssim_3d_reference(d, g) for d, g in zip(deg, gt)])
    assert got.shape == (3,)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.all(want < 0.99)  # the pairs differ, so the check is not trivial


def test_ssim_per_channel_matches_skimage(photo_pairs):
    gt, deg = photo_pairs
    got = np.asarray(ssim_pc(_to_unit(deg), _to_unit(gt)))
    want = np.array([structural_similarity(d, g, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=255,
                                           channel_axis=2) for d, g in zip(deg, gt)])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_ssim_modes_differ(photo_pairs):
    gt, deg = photo_pairs
    s3 = np.asarray(ssim_3d(_to_unit(deg), _to_unit(gt)))
    sp = np.asarray(ssim_pc(_to_unit(deg), _to_unit(gt)))
    assert np.all(np.abs(s3 - sp) > 1e-3)


def test_psnr_matches_skimage(photo_pairs):
    gt, deg = photo_pairs
    got = np.asarray(jax.jit(metrics.psnr)(_to_unit(deg), _to_unit(gt)))
    want = np.array([peak_signal_noise_ratio(g, d, data_range=255) for d, g in zip(deg, gt)])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_identical_images(photo_pairs):
    x = _to_unit(photo_pairs[0])
    assert np.all(np.isinf(np.asarray(jax.jit(metrics.psnr)(x, x))))
    np.testing.assert_allclose(np.asarray(ssim_3d(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ssim_pc(x, x)), 1.0, atol=1e-6)


def test_quantize_uint8_levels():
    x = jnp.asarray([-0.2, 0.0, 0.3, 0.50001, 1.0, 1.7], jnp.float32).reshape(1, 1, 6, 1)
    q = np.asarray(metrics.quantize_uint8(x)).ravel()
    np.testing.assert_array_equal(np.round(q * 255), [0, 0, 76, 128, 255, 255])
    np.testing.assert_allclose(q * 255, np.round(q * 255), atol=1e-4)


def test_bad_shapes():
    a = jnp.zeros((1, 20, 20, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(a, jnp.zeros((1, 20, 21, 3)))
    with pytest.raises(ValueError, match="unknown SSIM mode"):
        metrics.ssim(a, a, mode="2d")
    with pytest.raises(ValueError, match=">= 11"):
        metrics.ssim(jnp.zeros((1, 8, 20, 3)), jnp.zeros((1, 8, 20, 3)), mode="per_channel")


def _depth_reference(pred, gt, valid):
    """numpy float64: lstsq scale/shift on disparity, cap at max GT depth, AbsRel and delta1."""
    out = {"abs_rel": [], "delta1": []}
    for p, g, m in zip(pred, gt, valid):
        m = m & (g > 0)
        a = np.stack([p[m], np.ones(m.sum())], 1).astype(np.float64)
        s, t = np.linalg.lstsq(a, 1.0 / g[m].astype(np.float64), rcond=None)[0]
        disp = np.maximum(s * p[m] + t, 1.0 / g[m].max())
        d = 1.0 / disp
        out["abs_rel"].append(np.mean(np.abs(d - g[m]) / g[m]))
        out["delta1"].append(np.mean(np.maximum(d / g[m], g[m] / d) < 1.25))
    return {k: np.array(v) for k, v in out.items()}


def test_depth_metrics_exact_affine_disparity():
    rng = np.random.default_rng(2)
    depth = rng.uniform(1.0, 10.0, (2, 17, 29)).astype(np.float32)
    pred = (3.0 * (1.0 / depth) - 0.05).astype(np.float32)  # affine in disparity: aligns exactly
    valid = np.ones_like(depth, bool)
    valid[0, :3] = False
    res = metrics.depth_metrics(jnp.asarray(pred), jnp.asarray(depth), jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(res["abs_rel"]), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(res["delta1"]), 1.0)


def test_depth_metrics_match_numpy_reference():
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 20.0, (3, 19, 27)).astype(np.float32)
    pred = (2.0 / depth + rng.normal(0, 0.15, depth.shape)).astype(np.float32)
    valid = rng.random(depth.shape) > 0.2
    depth[~valid & (rng.random(depth.shape) > 0.5)] = 0.0  # invalid pixels may hold 0
    res = jax.jit(metrics.depth_metrics)(jnp.asarray(pred[..., None]), jnp.asarray(depth),
                                         jnp.asarray(valid))
    want = _depth_reference(pred, depth, valid)
    for k in ("abs_rel", "delta1"):
        assert res[k].shape == (3,)
        np.testing.assert_allclose(np.asarray(res[k]), want[k], rtol=1e-4, atol=1e-6)
    assert np.all(want["delta1"] < 1.0) and np.all(want["abs_rel"] > 0.01)


def test_depth_metrics_constant_prediction_scores_the_best_constant():
    """A dead depth head (constant output, here 0 and 0.37) gets scale 0: the aligned map is
    the mean GT disparity, scored as such, not NaN (0/0)."""
    rng = np.random.default_rng(4)
    depth = rng.uniform(1.0, 8.0, (2, 21, 33)).astype(np.float32)
    valid = rng.random(depth.shape) > 0.3
    pred = np.stack([np.zeros((21, 33)), np.full((21, 33), 0.37)]).astype(np.float32)
    res = jax.jit(metrics.depth_metrics)(jnp.asarray(pred), jnp.asarray(depth),
                                         jnp.asarray(valid))
    for i in range(2):
        g = depth[i][valid[i]].astype(np.float64)
        d = 1.0 / max(np.mean(1.0 / g), 1.0 / g.max())  # the best constant disparity, capped
        want_abs_rel = np.mean(np.abs(d - g) / g)
        want_delta1 = np.mean(np.maximum(d / g, g / d) < 1.25)
        np.testing.assert_allclose(float(res["abs_rel"][i]), want_abs_rel, rtol=1e-5)
        np.testing.assert_allclose(float(res["delta1"][i]), want_delta1, atol=1e-6)
