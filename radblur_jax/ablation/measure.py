"""What the depth ablation measures on a finished run: restoration per depth bin and per image,
real photographs, stage A's depth accuracy, and how strongly a mix's blur depends on depth.

Restorations are scored the way the GoPro protocol scores them: the last sub-decoder's output,
clipped and rounded to 8 bits, against the 8-bit sharp image. Depth bins are per pixel, by the
true depth's relative disparity `r = near / depth` in (0, 1]: the camera-translation blur of a
pixel is proportional to r (synthetic/render.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from radblur_jax.data.image_io import read_image
from radblur_jax.data.synthetic.writer import ensure_default_synthetic, pair_paths, read_manifest
from radblur_jax.eval import metrics

# (name, lowest r, highest r): r = near / depth; the background sits at r = near / far.
DEPTH_BINS = (("far", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("near", 2 / 3, 1.0 + 1e-6))
# Middlebury 2014 Motorcycle at skimage's quarter resolution (skimage.data.stereo_motorcycle's
# docstring): depth = focal * baseline / (disparity + doffs).
MOTORCYCLE_FOCAL_PX, MOTORCYCLE_BASELINE_MM, MOTORCYCLE_DOFFS_PX = 994.978, 193.001, 31.086
# The depth branch sees the motorcycle at about the synthetic scenes' scale (short side 252).
MOTORCYCLE_INPUT = (252, 378)


def test_pairs(root: str) -> tuple[list[dict[str, np.ndarray]], float]:
    """The test split of a synthetic set (`""` = the built-in one): `[{blur, sharp, depth}]`
    (`(H, W, 3)` float32 in [0, 1], depth `(H, W)`), and the set's near depth."""
    root_path = Path(root) if root else ensure_default_synthetic()
    manifest = read_manifest(root_path)
    if manifest is None:
        raise FileNotFoundError(f"{root_path}: no synthetic-set manifest.json")
    pairs = []
    for index in range(manifest["splits"]["test"]["pairs"]):
        rel = pair_paths("test", index, manifest["frames_per_scene"])
        pairs.append({"blur": read_image(str(root_path / rel["blur"])),
                      "sharp": read_image(str(root_path / rel["sharp"])),
                      "depth": np.load(root_path / rel["depth"]).astype(np.float32)})
    return pairs, float(manifest["params"]["depth_range"][0])


def photo_pairs(root: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`[(name, blurry, sharp)]` of a paired_folder set (`ROOT/input`, `ROOT/target`)."""
    names = sorted(os.listdir(os.path.join(root, "input")))
    return [(n, read_image(os.path.join(root, "input", n)),
             read_image(os.path.join(root, "target", n))) for n in names]


def _luma_gradient_energy(img: np.ndarray) -> np.ndarray:
    """Squared forward-difference gradient of the channel mean after a 2x2 box average (which
    quarters the noise's share): `(H // 2 - 1, W // 2 - 1)`."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    y = img[:h, :w].mean(axis=-1).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return (y[1:, :-1] - y[:-1, :-1]) ** 2 + (y[:-1, 1:] - y[:-1, :-1]) ** 2


def blur_by_depth(pairs: list[dict[str, np.ndarray]], share: float = 0.3) -> dict[str, float]:
    """How much more gradient energy the blur removes near than far.

    Over the pooled pixels of `pairs` (at half resolution, see `_luma_gradient_energy`), the
    nearest `share` (depth at or below its `share` quantile) and the farthest (at or above the
    `1 - share` quantile); in each, the removed share `1 - sum |grad blur|^2 / sum |grad
    sharp|^2`. Returns `{near, far, ratio}` (ratio = near / far, NaN unless far > 0; noise adds
    gradient energy, so a set with almost no far blur can have a far share near 0 or below).
    """
    def half(d: np.ndarray) -> np.ndarray:
        h, w = d.shape[0] // 2 * 2, d.shape[1] // 2 * 2
        return d[:h, :w].reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3))[:-1, :-1]

    depth = np.concatenate([half(p["depth"]).ravel() for p in pairs])
    sharp = np.concatenate([_luma_gradient_energy(p["sharp"]).ravel() for p in pairs])
    blur = np.concatenate([_luma_gradient_energy(p["blur"]).ravel() for p in pairs])
    near = depth <= np.quantile(depth, share)
    far = depth >= np.quantile(depth, 1.0 - share)
    removed = [float(1.0 - blur[m].sum() / sharp[m].sum()) for m in (near, far)]
    ratio = removed[0] / removed[1] if removed[1] > 0 else float("nan")
    return {"near": removed[0], "far": removed[1], "ratio": ratio}


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0


def _psnr(mse: float) -> float:
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def score_restorations(restore: Any, pairs: list[dict[str, np.ndarray]], near: float
                       ) -> list[dict]:
    """Per test image: psnr, ssim (3-D), blurry_psnr, and per depth bin the summed squared
    error, summed SSIM map and pixel count (`bins: {name: [sse, ssim_sum, count]}`).

    `restore`: `(1, H, W, 3)` -> restored `(1, H, W, 3)`.
    """
    rows = []
    for p in pairs:
        out = _u8(np.asarray(restore(jnp.asarray(p["blur"][None]))[0], np.float64))
        sharp = p["sharp"].astype(np.float64)
        err = ((out - sharp) ** 2).mean(axis=-1)
        smap = np.asarray(metrics.ssim_map(jnp.asarray(out[None], jnp.float32),
                                           jnp.asarray(sharp[None], jnp.float32)))[0].mean(-1)
        r = near / p["depth"]
        bins = {}
        for name, lo, hi in DEPTH_BINS:
            m = (r >= lo) & (r < hi)
            bins[name] = [float(err[m].sum()), float(smap[m].sum()), int(m.sum())]
        rows.append({"psnr": _psnr(err.mean()), "ssim": float(smap.mean()),
                     "blurry_psnr": _psnr(((p["blur"] - sharp) ** 2).mean()), "bins": bins})
    return rows


def score_photos(restore: Any, photos: list[tuple[str, np.ndarray, np.ndarray]]) -> dict:
    """Mean PSNR / SSIM (3-D) of the restored real photographs and of their blurry inputs."""
    psnr, ssim, blurry = [], [], []
    for _, blur, sharp in photos:
        out = _u8(np.asarray(restore(jnp.asarray(blur[None]))[0], np.float64))
        psnr.append(_psnr(((out - sharp) ** 2).mean()))
        ssim.append(float(metrics.ssim(jnp.asarray(out[None], jnp.float32),
                                       jnp.asarray(sharp[None]))[0]))
        blurry.append(_psnr(((blur - sharp) ** 2).mean()))
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)),
            "blurry_psnr": float(np.mean(blurry)), "count": len(psnr)}


def deblur_restore_fn(run_dir: str):
    """`(restore, params)` of a stage-B workdir's EMA weights."""
    from radblur_jax.eval.loading import load_trained
    loaded = load_trained(run_dir)
    fn = jax.jit(lambda p, x: loaded.model.apply({"params": p}, x).restored[-1])
    return (lambda x: fn(loaded.params, x)), loaded.params


def residual_scales(params: Any) -> dict[str, float]:
    """RMS of the decoder's zero-initialised output scales: the depth fusion's (`ada_k/scale`;
    NaN without fusion) and the NAF/FFT blocks' (`blocks_k/beta`, `gamma`). How far a branch
    has opened: each starts at 0, so its contribution grows with its scale."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    named = [("/".join(str(getattr(k, "key", k)) for k in path), np.asarray(x, np.float64))
             for path, x in leaves]

    def rms(xs: list[np.ndarray]) -> float:
        return float(np.sqrt(np.mean(np.concatenate([x.ravel() ** 2 for x in xs])))) if xs \
            else float("nan")

    ada = [x for n, x in named if n.startswith("decoder/") and "/ada_" in n
           and n.endswith("/scale") and "/norm/" not in n]
    blocks = [x for n, x in named if n.startswith("decoder/") and "/blocks_" in n
              and n.rsplit("/", 1)[-1] in ("beta", "gamma")]
    return {"fusion": rms(ada), "blocks": rms(blocks)}


def learning_curve(workdir: str) -> dict[str, list[float]]:
    """From WORKDIR/metrics.jsonl: train `loss` at each log step and `val` metric at each
    validation (val_psnr for stage B, val_abs_rel for stage A), with their steps."""
    curve = {"step": [], "loss": [], "val_step": [], "val": []}
    seen = set()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            key = (row["step"], "val_psnr" in row or "val_abs_rel" in row)
            if key in seen:  # a resumed run logs its restart step twice
                continue
            seen.add(key)
            if "loss" in row and "exit_accuracy" not in row:
                curve["step"].append(row["step"])
                curve["loss"].append(row["loss"])
            val = row.get("val_psnr", row.get("val_abs_rel"))
            if val is not None:
                curve["val_step"].append(row["step"])
                curve["val"].append(val)
    return curve


# ---- stage A: depth accuracy -------------------------------------------------------------

def _center_crop(x: np.ndarray, multiple: int) -> np.ndarray:
    h, w = x.shape[:2]
    hh, ww = h // multiple * multiple, w // multiple * multiple
    top, left = (h - hh) // 2, (w - ww) // 2
    return x[top:top + hh, left:left + ww]


def depth_predict_fn(model: Any, params: Any):
    """`(H, W, 3)` in [0, 1] (sides multiples of the patch) -> disparity `(H, W)`."""
    from radblur_jax.train.steps import vit_normalize
    fn = jax.jit(lambda p, x: model.apply({"params": p}, vit_normalize(x),
                                          return_features=False).disparity)
    return lambda img: np.asarray(fn(params, jnp.asarray(img[None], jnp.float32))[0])


def _depth_scores(pred: np.ndarray, depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    m = metrics.depth_metrics(jnp.asarray(pred[None]), jnp.asarray(depth[None]),
                              jnp.asarray(valid[None]))
    return float(m["abs_rel"][0]), float(m["delta1"][0])


def synthetic_depth_scores(predict: Any, pairs: list[dict[str, np.ndarray]], patch: int
                           ) -> dict[str, float]:
    """Mean AbsRel / delta1 over the test scenes' sharp images (centre crops to multiples of the
    patch; scale and shift fitted per image in disparity)."""
    rows = [_depth_scores(predict(_center_crop(p["sharp"], patch)), _center_crop(p["depth"], patch),
                          np.ones_like(_center_crop(p["depth"], patch), bool)) for p in pairs]
    return {"abs_rel": float(np.mean([r[0] for r in rows])),
            "delta1": float(np.mean([r[1] for r in rows]))}


def flat_scores(depth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """AbsRel / delta1 of the best constant prediction (the aligned disparity of a flat map is
    the mean true disparity): the floor any depth branch must beat."""
    g = depth[valid].astype(np.float64)
    pred = 1.0 / np.mean(1.0 / g)
    ratio = np.maximum(pred / g, g / pred)
    return float(np.mean(np.abs(pred - g) / g)), float(np.mean(ratio < 1.25))


def flat_depth_scores(pairs: list[dict[str, np.ndarray]], patch: int) -> dict[str, dict]:
    """`flat_scores` on the synthetic test scenes (mean over images, the crops
    `synthetic_depth_scores` uses) and on the motorcycle."""
    rows = [flat_scores(_center_crop(p["depth"], patch),
                        np.ones_like(_center_crop(p["depth"], patch), bool)) for p in pairs]
    depth, valid = motorcycle_depth()
    moto = flat_scores(depth, valid)
    return {"synthetic": {"abs_rel": float(np.mean([r[0] for r in rows])),
                          "delta1": float(np.mean([r[1] for r in rows]))},
            "motorcycle": {"abs_rel": moto[0], "delta1": moto[1]}}


def motorcycle_depth() -> tuple[np.ndarray, np.ndarray]:
    """True depth (mm) `(500, 741)` of the motorcycle's left view and its valid mask."""
    from skimage import data
    disp = data.stereo_motorcycle()[2]
    valid = np.isfinite(disp) & (disp > 0)
    depth = np.where(valid, MOTORCYCLE_FOCAL_PX * MOTORCYCLE_BASELINE_MM
                     / (np.where(valid, disp, 0.0) + MOTORCYCLE_DOFFS_PX), 0.0)
    return depth.astype(np.float32), valid


def motorcycle_scores(predict: Any) -> dict[str, float]:
    """AbsRel / delta1 on skimage's Middlebury motorcycle (left view, true depth from its
    disparity and calibration): the image resized to `MOTORCYCLE_INPUT`, the predicted
    disparity resized back (bilinear), scale and shift fitted in disparity."""
    from skimage import data
    left = data.stereo_motorcycle()[0]
    depth, valid = motorcycle_depth()
    h, w = depth.shape
    image = cv2.resize(left.astype(np.float32) / 255.0, MOTORCYCLE_INPUT[::-1],
                       interpolation=cv2.INTER_AREA)
    pred = cv2.resize(predict(image), (w, h), interpolation=cv2.INTER_LINEAR)
    abs_rel, delta1 = _depth_scores(pred.astype(np.float32), depth, valid)
    return {"abs_rel": abs_rel, "delta1": delta1}


def depth_branch(stage_a_dir: str | None, seed: int):
    """`(model, params, patch)`: a stage-A workdir's EMA weights, or (None) the branch as
    stage A starts it: random weights drawn from `seed`."""
    from radblur_jax.compile_options import init_compiler_options
    from radblur_jax.models.configs import radblur_config
    from radblur_jax.models.depth_anything import build_depth_anything
    from radblur_jax.workdir import load_params_for_inference
    if stage_a_dir is not None:
        config, params = load_params_for_inference(stage_a_dir)
        cfg = config.model_config
    else:
        cfg = radblur_config("tiny")
        cfg.dtype = "float32"
        params = None
    model = build_depth_anything(cfg)
    patch = int(cfg.encoder.patch_size)
    if params is None:
        params = jax.jit(model.init, compiler_options=init_compiler_options())(
            jax.random.key(seed), jnp.zeros((1, 2 * patch, 2 * patch, 3)))["params"]
    return model, params, patch
