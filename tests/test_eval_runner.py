"""End to end: synthetic test split -> evaluate -> the report files hold the numbers that the
metric functions give for the same images."""
from __future__ import annotations

import csv
import json
import os
import sys
from types import SimpleNamespace
from typing import NamedTuple

import cv2
import jax
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
    """`python -m radblur_jax.main --config configs/eval.py:tiny ...` runs the evaluation.
    Images and batch as in the test above, so with a compilation cache (.ci/run) this run
    loads that test's programs instead of compiling its own."""
    import subprocess
    root = tmp_path / "syn"
    write_dataset(root, 0, 1, SyntheticParams(height=40, width=56), seed=4, frames_per_scene=1)
    repo = os.path.join(os.path.dirname(__file__), "..")
    cmd = [sys.executable, "-m", "radblur_jax.main", "--config",
           os.path.join(repo, "configs", "eval.py") + ":tiny", "--workdir", str(tmp_path / "w"),
           "--config.random_init=True", f"--config.data.root={root}", "--config.grids=False",
           "--config.batch_size=2"]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(repo)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "w" / "eval" / "synthetic_test" / "summary.json")
                         .read_text())
    assert summary["restored"]["count"] == 1 and "RANDOM" in summary["model"]


class _Out(NamedTuple):
    restored: jax.Array
    disparity: jax.Array
    exit_logits: jax.Array = None


class _Adaptive(NamedTuple):
    restored: jax.Array
    disparity: jax.Array
    exit_logits: jax.Array
    steps: jax.Array


class TwoStepModel:
    """Stand-in with 2 sub-decoders: step 1 returns the input, step 2 `0.5 x + 0.25`; the
    adaptive exit stops after step 1 on images brighter than `threshold`."""
    cfg = SimpleNamespace(decoder=SimpleNamespace(num_sub_decoders=2))

    def __init__(self, threshold: float):
        self.threshold = threshold

    def apply(self, variables, x, num_active=None, method=None):
        images = jnp.stack([x, 0.5 * x + 0.25])
        disparity = jnp.mean(x, -1)
        if method != "adaptive":
            return _Out(images[:num_active], disparity)
        steps = jnp.where(jnp.mean(x, axis=(1, 2, 3)) > self.threshold, 1, 2).astype(jnp.int32)
        return _Adaptive(jnp.where(steps[:, None, None, None] == 1, images[0], images[1]),
                         disparity, None, steps)


def test_adaptive_report_gives_psnr_and_time_with_and_without(tmp_path, monkeypatch):
    from radblur_jax.data.sources import make_source
    from radblur_jax.eval.loading import LoadedModel
    root = tmp_path / "syn"
    write_dataset(root, 0, 4, SyntheticParams(height=24, width=32), seed=5, frames_per_scene=2)
    source = make_source({"name": "synthetic", "root": str(root), "split": "test"})
    means = sorted(float(source[i]["blur"].mean()) for i in range(len(source)))
    threshold = (means[1] + means[2]) / 2  # two images stop after step 1, two run both
    model = TwoStepModel(threshold)
    monkeypatch.setattr(runner, "load_model",
                        lambda config, workdir: LoadedModel(model, {}, "two-step"))
    cfg = eval_config.get_config("tiny")
    cfg.data.root = str(root)
    cfg.adaptive = True
    cfg.grids = False
    cfg.save_images = False
    summary = runner.run_evaluation(cfg, str(tmp_path / "work"), log=lambda m: None)
    with open(tmp_path / "work" / "eval" / "synthetic_test" / "per_image.json") as f:
        rows = json.load(f)
    assert sorted(r["sub_decoders"] for r in rows) == [1, 1, 2, 2]
    for r in rows:
        # step 1 is the identity; the full depth is step 2 whatever the exit head says
        want = r["identity_psnr"] if r["sub_decoders"] == 1 else r["full_psnr"]
        assert r["psnr"] == pytest.approx(want, abs=1e-6)
        assert r["seconds"] > 0 and r["full_seconds"] > 0
    a = summary["adaptive"]
    assert a["sub_decoders"] == 2 and a["mean_sub_decoders"] == 1.5
    assert a["full_depth"]["psnr"] == pytest.approx(np.mean([r["full_psnr"] for r in rows]))
    assert a["psnr_change"] == pytest.approx(
        np.mean([r["psnr"] for r in rows]) - np.mean([r["full_psnr"] for r in rows]))
    assert a["seconds"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert a["time_saved"] == pytest.approx(1 - a["seconds"] / a["full_depth_seconds"])
    table = (tmp_path / "work" / "eval" / "synthetic_test" / "summary.md").read_text()
    assert "| two-step, adaptive exit |" in table and "| two-step, all 2 sub-decoders |" in table
    assert "adaptive exit: 1.50 of 2 sub-decoders on average" in table
    assert f"PSNR change {a['psnr_change']:+.3f} dB" in table
    cfg.num_active = 1
    with pytest.raises(runner.ConfigError, match="num_active"):
        runner.run_evaluation(cfg, str(tmp_path / "work"), log=lambda m: None)
