"""Scores by benchmark protocol: `score_batch(pred, gt, protocol)` -> one dict per image.

Every protocol scores the 8-bit image a method saves: predictions are clipped to [0, 1] and
rounded to uint8 levels first (`metrics.quantize_uint8`, `metrics.uint_levels`: one arithmetic).
- "gopro" (also HIDE, REDS, the synthetic set): RGB PSNR over the whole image; SSIM in the
  3-D form of the papers' tables (`ssim_mode="3d"`) or per channel (`"per_channel"`).
- "realblur": intensity matching, ECC homography alignment, masked PSNR/SSIM (eval.align).
- "rsblur": as realblur, but the aligned prediction and ground truth are clipped to [0, 1]
  before PSNR/SSIM (the official evaluate_RSBlur.py order); reports add saturated /
  non-saturated means.

`protocol_for(dataset, protocol)` ties each benchmark to its protocol (`DATASET_PROTOCOLS`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from radblur_jax.eval import align, metrics

PROTOCOLS = ("gopro", "realblur", "rsblur")
SSIM_MODES = ("3d", "per_channel")

# The benchmarks whose published numbers use one protocol. Other datasets (the built-in
# synthetic set, paired_folder) default to "gopro" and take any protocol.
DATASET_PROTOCOLS = {"gopro": "gopro", "hide": "gopro", "reds": "gopro",
                     "realblur_j": "realblur", "realblur_r": "realblur", "rsblur": "rsblur"}


def check_protocol(protocol: str, ssim_mode: str = "3d") -> None:
    """Raises ValueError for an unknown protocol or SSIM mode."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if ssim_mode not in SSIM_MODES:
        raise ValueError(f"unknown ssim_mode {ssim_mode!r}; expected one of {SSIM_MODES}")


def protocol_for(dataset: str | None, protocol: str = "") -> str:
    """The protocol to score `dataset` with: `protocol` when given, else the dataset's own
    (`DATASET_PROTOCOLS`; "gopro" for datasets without one).

    Raises ValueError for an unknown protocol, or for one that contradicts a benchmark's own:
    such numbers cannot be compared with the benchmark's published tables, and a run scored
    so by a stray flag is easy to miss among others (docs/evaluation.md).
    """
    own = DATASET_PROTOCOLS.get(dataset or "")
    if not protocol:
        return own or "gopro"
    check_protocol(protocol)
    if own is not None and protocol != own:
        raise ValueError(
            f"protocol {protocol!r} contradicts dataset {dataset!r}, whose published numbers "
            f"use protocol {own!r}; leave protocol empty (the dataset's own), or score these "
            "images as a paired_folder dataset or with radblur_jax.eval.score")
    return protocol


@functools.partial(jax.jit, static_argnames=("ssim_mode",))
def _gopro_scores(pred: jax.Array, gt: jax.Array, ssim_mode: str) -> tuple[jax.Array, jax.Array]:
    p, g = metrics.quantize_uint8(pred), metrics.quantize_uint8(gt)
    return metrics.psnr(p, g), metrics.ssim(p, g, mode=ssim_mode)


def score_batch(pred: np.ndarray, gt: np.ndarray, protocol: str, *,
                ssim_mode: str = "3d") -> list[dict]:
    """`pred`, `gt` `(B, H, W, 3)` float in [0, 1] -> B dicts with "psnr", "ssim"
    (+ "ecc_ok" for realblur/rsblur). `ssim_mode` applies to "gopro" only."""
    check_protocol(protocol, ssim_mode)
    pred = np.asarray(pred, np.float32)
    gt = np.asarray(gt, np.float32)
    if pred.shape != gt.shape:
        raise ValueError(f"score_batch: prediction {pred.shape} and ground truth {gt.shape} "
                         "differ in shape")
    if protocol == "gopro":
        psnr, ssim = _gopro_scores(pred, gt, ssim_mode)
        return [{"psnr": float(p), "ssim": float(s)} for p, s in zip(np.asarray(psnr),
                                                                     np.asarray(ssim))]
    # In numpy: exactly `uint8 / 255.0` in float32, as the official script reads its PNGs
    # (ECC is sensitive to 1-ulp differences that XLA's constant folding may introduce).
    q, gq = quantize_uint8_np(pred), quantize_uint8_np(gt)
    clip = protocol == "rsblur"
    return [align.realblur_scores(p, g, clip=clip) for p, g in zip(q, gq)]


def quantize_uint8_np(images: np.ndarray) -> np.ndarray:
    """numpy twin of `metrics.quantize_uint8`: `metrics.uint_levels(x) / 255` in float32."""
    return metrics.uint_levels(images).astype(np.float32) / np.float32(255.0)


def ssim_label(protocol: str, ssim_mode: str) -> str:
    """How the SSIM column of a table was computed (printed under every table)."""
    if protocol == "gopro":
        return ("3-D Gaussian SSIM (11x11x11, as MATLAB ssim / the papers' tables)"
                if ssim_mode == "3d" else "per-channel Gaussian SSIM (scikit-image form)")
    if protocol == "rsblur":
        return ("masked per-channel Gaussian SSIM after ECC alignment, aligned images clipped "
                "to [0, 1] (official RSBlur script)")
    return "masked per-channel Gaussian SSIM after ECC alignment (official RealBlur script)"


def mean_scores(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """`count` (the number of rows) and, per key, the mean over the rows whose value is finite.

    Rows left out of a key's mean are counted, never dropped silently: `<key>_infinite` (+-inf,
    e.g. the PSNR of an output identical to its ground truth) and `<key>_missing` (absent, None
    or NaN), each present only when non-zero. `mean_notes` turns them into sentences.
    """
    out: dict = {"count": len(rows)}
    for k in keys:
        vals = [r.get(k) for r in rows]
        if all(v is None for v in vals):
            continue  # a key these rows do not have (e.g. depth on a set without depth)
        finite = [v for v in vals if v is not None and np.isfinite(v)]
        infinite = sum(v is not None and bool(np.isinf(v)) for v in vals)
        missing = len(vals) - len(finite) - infinite
        if finite:
            out[k] = float(np.mean(finite))
        if infinite:
            out[f"{k}_infinite"] = infinite
        if missing:
            out[f"{k}_missing"] = missing
    return out


def mean_notes(means: dict, keys: Sequence[str] = ("psnr", "ssim"), label: str = "") -> list[str]:
    """Sentences saying which rows a `mean_scores` mean leaves out (none: an empty list);
    `label` starts each sentence (e.g. "restored: ")."""
    notes = []
    for k in keys:
        inf, miss = means.get(f"{k}_infinite", 0), means.get(f"{k}_missing", 0)
        if not inf and not miss:
            continue
        parts = []
        if inf:
            parts.append(f"{inf} infinite" + (" (output identical to the ground truth)"
                                              if k == "psnr" else ""))
        if miss:
            parts.append(f"{miss} missing or NaN")
        name = k.upper() if k in ("psnr", "ssim") else k
        notes.append(f"{label}{name} mean over {means['count'] - inf - miss} of "
                     f"{means['count']} images; {' and '.join(parts)} left out.")
    return notes
