"""The RealBlur / RSBlur evaluation protocol (host side, numpy + OpenCV).

Follows the official `evaluation_RealBlur_ecc.py` step by step (docs/evaluation.md):

1. intensity matching: `pred *= sum(gt * pred) / sum(pred^2)`;
2. ECC homography of the prediction onto the ground truth on grayscale
   (`cv2.findTransformECC`, MOTION_HOMOGRAPHY, 100 iterations, eps 0, gaussFiltSize 5);
3. the prediction warped with cubic interpolation and reflected borders, an all-ones mask warped
   with nearest neighbour (zeros outside); both images multiplied by the mask;
4. PSNR from the squared error summed over the image divided by the mask's sum;
5. SSIM map (Gaussian 11 taps, sigma 1.5, per channel, float64) times the mask, 5-pixel border
   cropped, per channel sum / mask sum, mean over channels.

RSBlur (official `evaluate_RSBlur.py`, `clip=True`) takes the same steps and, between 3 and 4,
clips the aligned, masked prediction and ground truth to [0, 1]: the intensity gain and the
cubic warp can push values past 1, and the clip is what limits them. RealBlur's script has no
such clip. Both scripts read 8-bit PNGs, so the inputs here are already in [0, 1].

Unlike some copies of the script, a failed ECC is not silent: the pair is scored without
alignment and `ecc_ok` is False in its result (reports count such pairs).
Images are `(H, W, 3)` float in [0, 1] (8-bit levels as saved to PNG).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from radblur_jax.eval.metrics import SSIM_K1, SSIM_K2, SSIM_RADIUS, SSIM_SIGMA, SSIM_TAPS

ECC_ITERATIONS = 100
ECC_GAUSS_FILT = 5


@dataclasses.dataclass(frozen=True)
class Aligned:
    """Masked, aligned pair: `pred`, `gt` `(H, W, 3)` float32, `mask` `(H, W, 3)` float32 0/1,
    `warp` `(3, 3)` float32 homography (gt -> pred coordinates), `ecc_ok` (False: identity)."""
    pred: np.ndarray
    gt: np.ndarray
    mask: np.ndarray
    warp: np.ndarray
    ecc_ok: bool
    ecc_message: str = ""


def intensity_match(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`pred` scaled by the least-squares gain `sum(gt * pred) / sum(pred^2)` (float32)."""
    pred = np.asarray(pred, np.float32)
    gain = np.sum(np.asarray(gt, np.float32) * pred) / np.sum(pred * pred)
    return (gain * pred).astype(np.float32)


def ecc_homography(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, bool, str]:
    """ECC homography `(3, 3)` float32 that maps gt pixel coordinates into `pred`.

    Returns `(warp, ok, message)`; on failure the identity, False and OpenCV's message.
    """
    warp = np.eye(3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, 0)
    try:
        _, warp = cv2.findTransformECC(
            cv2.cvtColor(np.asarray(gt, np.float32), cv2.COLOR_RGB2GRAY),
            cv2.cvtColor(np.asarray(pred, np.float32), cv2.COLOR_RGB2GRAY),
            warp, cv2.MOTION_HOMOGRAPHY, criteria, None, ECC_GAUSS_FILT)
    except cv2.error as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else "cv2.error"
        return np.eye(3, dtype=np.float32), False, msg
    return np.asarray(warp, np.float32), True, ""


def align(pred: np.ndarray, gt: np.ndarray) -> Aligned:
    """Steps 1-3 of the protocol for one pair `(H, W, 3)` in [0, 1]."""
    gt = np.asarray(gt, np.float32)
    matched = intensity_match(pred, gt)
    warp, ok, msg = ecc_homography(matched, gt)
    h, w = gt.shape[:2]
    flags = cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(matched, warp, (w, h), flags=cv2.INTER_CUBIC + flags,
                                 borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpPerspective(np.ones_like(matched), warp, (w, h),
                               flags=cv2.INTER_NEAREST + flags, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
    return Aligned(warped * mask, gt * mask, mask, warp, ok, msg)


def masked_psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray,
                data_range: float = 1.0) -> float:
    """PSNR with the squared error summed over all pixels and divided by `sum(mask)`."""
    diff = np.asarray(gt, np.float64) - np.asarray(pred, np.float64)
    err = np.sum(diff * diff) / np.sum(mask, dtype=np.float64)
    return float(10.0 * np.log10(data_range ** 2 / err))


def _gaussian(x: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(x, (SSIM_TAPS, SSIM_TAPS), SSIM_SIGMA, sigmaY=SSIM_SIGMA,
                            borderType=cv2.BORDER_REFLECT)


def masked_ssim(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray,
                data_range: float = 1.0) -> float:
    """Per-channel Gaussian SSIM map (float64) times `mask`, border of 5 cropped, normalised by
    the cropped mask's sum per channel, mean over channels."""
    x = np.asarray(gt, np.float64)
    y = np.asarray(pred, np.float64)
    mu_x, mu_y = _gaussian(x), _gaussian(y)
    var_x = _gaussian(x * x) - mu_x * mu_x
    var_y = _gaussian(y * y) - mu_y * mu_y
    cov = _gaussian(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1)
                                                       * (var_x + var_y + c2))
    r = SSIM_RADIUS
    m = np.asarray(mask, np.float64)[r:-r, r:-r]
    per_channel = np.sum(smap[r:-r, r:-r] * m, axis=(0, 1)) / np.sum(m, axis=(0, 1))
    return float(np.mean(per_channel))


def realblur_scores(pred: np.ndarray, gt: np.ndarray, *, clip: bool = False) -> dict:
    """Protocol scores of one pair: `{"psnr", "ssim", "ecc_ok"}` (plus "ecc_message" on failure).

    `clip=True` is the RSBlur variant: the aligned, masked prediction and ground truth are
    clipped to [0, 1] after the intensity matching and the warp, just before PSNR and SSIM.
    """
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"realblur_scores: expected two (H, W, 3) images of one size, got "
                         f"{pred.shape} and {gt.shape}")
    a = align(pred, gt)
    p, g = a.pred, a.gt
    if clip:
        p, g = np.clip(p, 0.0, 1.0), np.clip(g, 0.0, 1.0)
    out = {"psnr": masked_psnr(p, g, a.mask), "ssim": masked_ssim(p, g, a.mask),
           "ecc_ok": a.ecc_ok}
    if not a.ecc_ok:
        out["ecc_message"] = a.ecc_message
    return out
