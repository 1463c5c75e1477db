"""End to end: synthetic test split -> evaluate -> the report files hold the numbers that the
metric functions give for the same images."""
from __future__ import annotations

import csv
import json
import os
import sys

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from radblur_jax.data.synthetic import SyntheticParams, write_dataset
from radblur_jax.eval import metrics, runner

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import eval as eval_config  # noqa: E402  (configs/eval.py)


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


@pytest.mark.slow
def test_synthetic_split_end_to_end(tmp_path):
    root = tmp_path / "syn"
    write_dataset(root, 0, 3, SyntheticParams(height=40, width=56), seed=3, frames_per_scene=2)
    cfg = eval_config.get_config("tiny")
    cfg.random_init = True
    cfg.data.root = str(root)
    cfg.batch_size = 2
    runner.evaluate(cfg, str(tmp_path / "work"))
    out = tmp_path / "work" / "eval" / "synthetic_test"
    expected = {"per_image.csv", "per_image.json", "summary.json", "summary.md", "restored",
                "comparison_best.png", "comparison_median.png", "comparison_worst.png"}
    assert expected <= set(os.listdir(out))
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    with open(out / "per_image.json") as f:
        assert [r["psnr"] for r in json.load(f)] == [float(r["psnr"]) for r in rows]
    for r in rows:
        scene = os.path.dirname(r["name"])
        stem = os.path.splitext(os.path.basename(r["name"]))[0]
        restored = jnp.asarray(_rgb(out / "restored" / scene / f"{stem}.png"))[None]
        sharp = jnp.asarray(_rgb(root / "test" / scene / "sharp" / f"{stem}.png"))[None]
        blur = jnp.asarray(_rgb(root / "test" / scene / "blur" / f"{stem}.png"))[None]
        assert float(r["psnr"]) == pytest.approx(float(metrics.psnr(restored, sharp)[0]),
                                                 abs=1e-4)
        assert float(r["ssim"]) == pytest.approx(float(metrics.ssim(restored, sharp)[0]),
                                                 abs=1e-6)
        assert float(r["identity_psnr"]) == pytest.approx(float(metrics.psnr(blur, sharp)[0]),
                                                          abs=1e-4)
        assert float(r["identity_ssim"]) == pytest.approx(float(metrics.ssim(blur, sharp)[0]),
                                                          abs=1e-6)
        assert 0.0 <= float(r["delta1"]) <= 1.0 and float(r["abs_rel"]) > 0.0
    with open(out / "summary.json") as f:
        summary = json.load(f)
    for key in ("psnr", "ssim", "abs_rel", "delta1"):
        assert summary["restored"][key] == pytest.approx(np.mean([float(r[key]) for r in rows]))
    assert summary["identity"]["psnr"] == pytest.approx(
        np.mean([float(r["identity_psnr"]) for r in rows]))
    table = (out / "summary.md").read_text()
    assert f"{summary['restored']['psnr']:.2f} / {summary['restored']['ssim']:.4f}" in table
    assert "identity (blurry input)" in table
    grid = cv2.imread(str(out / "comparison_best.png"))
    assert grid.shape[1] > 4 * 384 and grid.shape[0] > 384


@pytest.mark.slow
def test_main_cli_dispatches_eval(tmp_path):
    """`python -m radblur_jax.main --config configs/eval.py:tiny ...` runs the evaluation."""
    import subprocess
    root = tmp_path / "syn"
    write_dataset(root, 0, 1, SyntheticParams(height=32, width=48), seed=4, frames_per_scene=1)
    repo = os.path.join(os.path.dirname(__file__), "..")
    cmd = [sys.executable, "-m", "radblur_jax.main", "--config",
           os.path.join(repo, "configs", "eval.py") + ":tiny", "--workdir", str(tmp_path / "w"),
           "--config.random_init=True", f"--config.data.root={root}", "--config.grids=False"]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(repo)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "w" / "eval" / "synthetic_test" / "summary.json")
                         .read_text())
    assert summary["restored"]["count"] == 1 and "RANDOM" in summary["model"]
