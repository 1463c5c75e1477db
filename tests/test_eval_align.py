"""eval.align (RealBlur/RSBlur protocol) against an independent copy of the official script."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import structural_similarity

from radblur_jax.eval import align

# A small homography: ~1.5 px shift, 0.4 deg rotation, slight perspective (gt -> pred coords).
H_TRUE = np.array([[np.cos(0.007), -np.sin(0.007), 1.5],
                   [np.sin(0.007), np.cos(0.007), -0.8],
                   [2e-5, -1e-5, 1.0]], np.float32)


@pytest.fixture(scope="module")
def pair():
    """gt: a real photograph crop (float32 [0, 1], 8-bit levels); pred: gt warped by H_TRUE,
    darkened by 8%, slightly blurred and noisy, rounded to 8 bits."""
    gt8 = data.astronaut()[100:340, 120:440]  # 240x320
    gt = gt8.astype(np.float32) / 255.0
    h, w = gt.shape[:2]
    warped = cv2.warpPerspective(gt, H_TRUE, (w, h), flags=cv2.INTER_CUBIC,
                                 borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(0)
    pred = 0.92 * cv2.GaussianBlur(warped, (0, 0), 0.8) + rng.normal(0, 0.01, gt.shape)
    pred = np.round(np.clip(pred, 0, 1) * 255).astype(np.float32) / 255.0
    return pred, gt


def _official(pred: np.ndarray, gt: np.ndarray,
              rsblur: bool = False) -> tuple[float, float, np.ndarray]:
    """The official evaluation_RealBlur_ecc.py steps, written out independently here;
    `rsblur=True`: evaluate_RSBlur.py's, which clip the aligned pair to [0, 1] before scoring."""
    z, x = pred.astype(np.float32), gt.astype(np.float32)
    zs = (np.sum(x * z) / np.sum(z * z)) * z
    warp = np.eye(3, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 0)
    _, warp = cv2.findTransformECC(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY),
                                   cv2.cvtColor(zs, cv2.COLOR_RGB2GRAY), warp,
                                   cv2.MOTION_HOMOGRAPHY, crit, None, 5)
    size = (x.shape[1], x.shape[0])
    zr = cv2.warpPerspective(zs, warp, size, flags=cv2.INTER_CUBIC + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
    cr = cv2.warpPerspective(np.ones_like(zs, dtype="float32"), warp, size,
                             flags=cv2.INTER_NEAREST + cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    zr, xr = zr * cr, x * cr
    if rsblur:
        zr, xr = np.clip(zr, 0, 1), np.clip(xr, 0, 1)
    err = np.sum((xr - zr) ** 2, dtype=np.float64) / np.sum(cr)
    psnr = 10 * np.log10(1.0 / err)
    # skimage 0.17.2 (pinned by the script) computes in float64; cast as it did.
    _, smap = structural_similarity(xr.astype(np.float64), zr.astype(np.float64),
                                    channel_axis=2, gaussian_weights=True,
                                    use_sample_covariance=False, data_range=1.0, full=True)
    smap = smap * cr
    pad = (2 * int(3.5 * 1.5 + 0.5) + 1 - 1) // 2
    s = smap[pad:-pad, pad:-pad].sum(axis=(0, 1)) / cr[pad:-pad, pad:-pad].sum(axis=(0, 1))
    return float(psnr), float(np.mean(s)), warp


def test_realblur_matches_official_steps(pair):
    pred, gt = pair
    want_psnr, want_ssim, want_warp = _official(pred, gt)
    got = align.realblur_scores(pred, gt)
    assert got["ecc_ok"]
    assert abs(got["psnr"] - want_psnr) < 1e-6
    assert abs(got["ssim"] - want_ssim) < 1e-6
    # ECC found the homography we applied (pred = gt warped by H_TRUE).
    a = align.align(pred, gt)
    np.testing.assert_allclose(a.warp, want_warp, atol=1e-6)
    corners = np.array([[0, 0, 1], [319, 0, 1], [0, 239, 1], [319, 239, 1]], np.float64).T
    proj = lambda m: (m @ corners)[:2] / (m @ corners)[2]
    assert np.max(np.abs(proj(a.warp.astype(np.float64)) - proj(H_TRUE.astype(np.float64)))) < 0.1


def test_alignment_raises_scores(pair):
    pred, gt = pair
    aligned = align.realblur_scores(pred, gt)
    naive = 10 * np.log10(1.0 / np.mean((pred.astype(np.float64) - gt) ** 2))
    assert aligned["psnr"] > naive + 5.0
    assert 0.5 < aligned["ssim"] < 1.0


def test_ecc_failure_is_reported_not_silent():
    rng = np.random.default_rng(1)
    gt = rng.random((64, 80, 3)).astype(np.float32)
    pred = np.zeros_like(gt)
    pred[..., 0] = 1.0  # no texture: ECC cannot converge
    res = align.realblur_scores(pred, gt)
    assert res["ecc_ok"] is False and res["ecc_message"]
    assert np.isfinite(res["psnr"])


@pytest.fixture(scope="module")
def bright_pair():
    """gt with saturated highlights; pred: gt warped by H_TRUE at 80% brightness, noisy, 8-bit.
    The intensity gain (~1.25) and the cubic warp push the aligned prediction past 1 there."""
    gt8 = data.astronaut()[100:340, 120:440].astype(np.float32)
    gt = np.round(np.clip(gt8 * 1.4, 0, 255)) / 255.0  # ~15% of the pixels at 1.0
    gt = gt.astype(np.float32)
    h, w = gt.shape[:2]
    warped = cv2.warpPerspective(gt, H_TRUE, (w, h), flags=cv2.INTER_CUBIC,
                                 borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(2)
    pred = 0.8 * warped + rng.normal(0, 0.02, gt.shape)
    return (np.round(np.clip(pred, 0, 1) * 255) / 255.0).astype(np.float32), gt


def test_rsblur_clips_the_aligned_pair_as_the_official_script(bright_pair):
    from radblur_jax.eval import protocols

    pred, gt = bright_pair
    a = align.align(pred, gt)
    assert a.ecc_ok and (a.pred > 1.0).mean() > 0.01  # the clip has work to do
    want_psnr, want_ssim, _ = _official(pred, gt, rsblur=True)
    (got,) = protocols.score_batch(pred[None], gt[None], "rsblur")
    assert abs(got["psnr"] - want_psnr) < 1e-6 and abs(got["ssim"] - want_ssim) < 1e-6
    # RealBlur keeps the unclipped values (its official script has no clip) ...
    (rb,) = protocols.score_batch(pred[None], gt[None], "realblur")
    rb_psnr, rb_ssim, _ = _official(pred, gt)
    assert abs(rb["psnr"] - rb_psnr) < 1e-6 and abs(rb["ssim"] - rb_ssim) < 1e-6
    assert abs(got["psnr"] - rb["psnr"]) > 0.05
    # ... and clipping before the alignment (the inputs are 8-bit already) changes nothing.
    assert align.realblur_scores(np.clip(pred, 0, 1), gt) == rb


def test_shape_mismatch():
    with pytest.raises(ValueError, match="one size"):
        align.realblur_scores(np.zeros((20, 20, 3)), np.zeros((20, 21, 3)))
