"""The ablation's numbers from the runs' saved results: per-run scalars, per-seed paired
differences and their paired t-test.

Spread is the sample standard deviation over seeds. A paired difference compares two variants
trained with the same seed (same data order, crops and decoder init); its t is
mean / (std / sqrt(n)), and with 3 seeds |t| > 4.30 is a two-sided 5% paired t-test.
"""
from __future__ import annotations

import math

import numpy as np

from radblur_jax.ablation.measure import DEPTH_BINS
from radblur_jax.ablation.plan import Plan

PAIRS = (("c", "a", "pretrained depth + fusion vs neither"),
         ("b", "a", "fusion alone (random encoder)"),
         ("c", "d", "fusion, given the pretrained encoder"))
BLUR_BINS = ("strong", "medium", "mild")
# Two-sided 5% critical values of Student's t by degrees of freedom.
_T_CRIT = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}

def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _fmt(values: list[float], digits: int) -> str:
    if not values or not all(math.isfinite(v) for v in values):
        return "-"
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def _psnr(mse: float) -> float:
    return float(10 * np.log10(1 / max(mse, 1e-12)))


def run_scores(result: dict, blur_edges: tuple[float, float]) -> dict[str, float]:
    """One stage-B run's scalars: psnr, ssim, photo_psnr, photo_ssim, per depth bin
    `<bin>_psnr` / `<bin>_ssim` (pooled over the test pixels) and per blur bin `blur_<bin>_psnr`
    (mean over the images in that bin)."""
    images = result["images"]
    out = {"psnr": float(np.mean([r["psnr"] for r in images])),
           "ssim": float(np.mean([r["ssim"] for r in images])),
           "photo_psnr": result["photos"]["psnr"], "photo_ssim": result["photos"]["ssim"],
           "fusion_scale": result["residual_scales"]["fusion"],
           "block_scale": result["residual_scales"]["blocks"]}
    for name, _, _ in DEPTH_BINS:
        sse, ssim_sum, count = (sum(r["bins"][name][k] for r in images) for k in range(3))
        out[f"{name}_psnr"] = _psnr(sse / count) if count else float("nan")
        out[f"{name}_ssim"] = ssim_sum / count if count else float("nan")
    for name, members in zip(BLUR_BINS, _blur_bins(images, blur_edges)):
        out[f"blur_{name}_psnr"] = float(np.mean([images[i]["psnr"] for i in members]))
    return out


def _blur_edges(images: list[dict]) -> tuple[float, float]:
    """Terciles of the test images' blurry PSNR (the test set is the same for every run)."""
    b = np.array([r["blurry_psnr"] for r in images])
    return float(np.quantile(b, 1 / 3)), float(np.quantile(b, 2 / 3))


def _blur_bins(images: list[dict], edges: tuple[float, float]) -> list[list[int]]:
    b = [r["blurry_psnr"] for r in images]
    return [[i for i, v in enumerate(b) if v <= edges[0]],
            [i for i, v in enumerate(b) if edges[0] < v <= edges[1]],
            [i for i, v in enumerate(b) if v > edges[1]]]


def collect(plan: Plan, results: list[dict]) -> dict:
    """`{mix: {variant: {seed: scores}}}` for stage B and `{mix: {seed: depth}}` for stage A."""
    deblur: dict = {m.name: {v.name: {} for v in plan.variants} for m in plan.mixes}
    depth: dict = {m.name: {} for m in plan.mixes}
    edges = {}
    for r in results:
        if r["variant"] is None:
            depth[r["mix"]][r["seed"]] = r["depth"]
            continue
        edges.setdefault(r["mix"], _blur_edges(r["images"]))
        deblur[r["mix"]][r["variant"]][r["seed"]] = run_scores(r, edges[r["mix"]])
    return {"deblur": deblur, "depth": depth, "blur_edges": edges}


def paired(deblur_mix: dict, x: str, y: str, key: str) -> list[float]:
    """Per seed that both variants finished: score(x) - score(y)."""
    seeds = sorted(set(deblur_mix[x]) & set(deblur_mix[y]))
    return [deblur_mix[x][s][key] - deblur_mix[y][s][key] for s in seeds]


def t_stat(diffs: list[float]) -> float:
    if len(diffs) < 2:
        return float("nan")
    mean, std = _mean_std(diffs)
    if std > 0:
        return mean / (std / math.sqrt(len(diffs)))
    return math.copysign(math.inf, mean) if mean else float("nan")


def verdict(diffs: list[float]) -> str:
    """'identical', 'better' / 'worse' when the paired t-test clears 5%, else 'within the
    spread'."""
    if diffs and all(d == 0 for d in diffs):
        return "identical"
    crit = _T_CRIT.get(len(diffs) - 1)
    if crit is None:
        return "too few seeds"
    t = t_stat(diffs)
    if abs(t) > crit:
        return "better" if t > 0 else "worse"
    return "within the spread"
