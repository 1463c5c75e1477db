"""eval.reports and the runner's report logic, with a stand-in model (fast).

The stand-in returns its input, so the restored scores must equal the identity baseline's.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
import test_data_fakes as fakes

from radblur_jax.eval import reports, runner
from radblur_jax.eval.loading import LoadedModel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import eval as eval_config  # noqa: E402  (configs/eval.py)


class IdentityModel:
    """RADBlur's apply interface; restored = input, disparity = channel mean."""

    def apply(self, variables, x, num_active=None, method=None):
        from test_eval_inference import _Out
        return _Out(x[None], jnp.mean(x, -1))


def _stand_in(monkeypatch):
    loaded = LoadedModel(IdentityModel(), {"w": jnp.float32(1)}, "identity stand-in")
    monkeypatch.setattr(runner, "load_model", lambda config, workdir: loaded)


def _rsblur(root: str, non_saturation: bool = True) -> str:
    """The fake RSBlur set (its saturation list: the first test pair) and, with
    `non_saturation`, the official non-saturation list of the other test pairs."""
    fakes.make_rsblur(root)
    lists = os.path.join(root, "datalist", "RSBlur")
    if non_saturation:
        with open(os.path.join(lists, "RSBlur_real_test.txt")) as f:
            test = f.readlines()
        with open(os.path.join(lists, "RSBlur_real_test_saturation.txt")) as f:
            sat = f.readlines()
        with open(os.path.join(lists, "RSBlur_real_test_non_saturation.txt"), "w") as f:
            f.writelines(ln for ln in test if ln not in sat)
    return lists


def test_rsblur_run_with_saturated_split(tmp_path, monkeypatch):
    _stand_in(monkeypatch)
    _rsblur(str(tmp_path / "data"))
    cfg = eval_config.get_config("tiny")
    cfg.data = {"name": "rsblur", "root": str(tmp_path / "data" / "RSBlur"), "split": "test"}
    cfg.batch_size = 2  # protocol left at its default: the dataset's own
    summary = runner.run_evaluation(cfg, str(tmp_path / "w"), log=lambda m: None)
    assert summary["protocol"] == "rsblur"
    out = tmp_path / "w" / "eval" / "rsblur_test"
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["saturated"] for r in rows] == ["True", "False"]
    for r in rows:
        assert r["psnr"] == r["identity_psnr"] and r["ssim"] == r["identity_ssim"]
        assert r["ecc_ok"] in ("True", "False")
    assert summary["restored_saturated"]["count"] == 1
    assert summary["restored_saturated"]["psnr"] == pytest.approx(float(rows[0]["psnr"]))
    assert summary["restored_non_saturated"]["psnr"] == pytest.approx(float(rows[1]["psnr"]))
    table = (out / "summary.md").read_text()
    assert "| method | rsblur (test) | saturated | non-saturated |" in table
    assert "official RSBlur script" in table and "aligned pair clipped to [0, 1]" in table
    assert summary["saturation_split"] == "official lists"
    assert summary["saturation_unlisted"] == 0 and "neither" not in table
    restored = cv2.imread(str(out / "restored" / (os.path.splitext(rows[0]["name"])[0] + ".png")))
    assert restored.shape == (fakes.H, fakes.W, 3)


def test_rsblur_without_lists_or_with_unlisted_images_says_so(tmp_path, monkeypatch):
    _stand_in(monkeypatch)
    lists = _rsblur(str(tmp_path / "data"), non_saturation=False)
    cfg = eval_config.get_config("tiny")
    cfg.data = {"name": "rsblur", "root": str(tmp_path / "data" / "RSBlur"), "split": "test"}
    cfg.save_images = cfg.grids = False
    logs = []
    summary = runner.run_evaluation(cfg, str(tmp_path / "w"), log=logs.append)
    assert "RSBlur saturation lists not found or unreadable" in summary["saturation_split"]
    assert "RSBlur_real_test_non_saturation.txt" in summary["saturation_split"]
    assert any("saturation lists not found or unreadable" in m for m in logs)
    assert "restored_saturated" not in summary
    table = (tmp_path / "w" / "eval" / "rsblur_test" / "summary.md").read_text()
    assert "saturated / non-saturated: RSBlur saturation lists not found" in table
    # Both lists present, but the second test image in neither: warned, counted, left out of
    # both sub-means (the official script raises here).
    with open(os.path.join(lists, "RSBlur_real_train.txt")) as f:
        other = f.readline()  # a pair that is not a test image
    with open(os.path.join(lists, "RSBlur_real_test_non_saturation.txt"), "w") as f:
        f.write(other)
    logs.clear()
    summary = runner.run_evaluation(cfg, str(tmp_path / "w"), log=logs.append)
    assert summary["saturation_split"] == "official lists"
    assert summary["saturation_unlisted"] == 1
    assert summary["restored_saturated"]["count"] == 1
    assert summary["restored_non_saturated"] == {"count": 0}
    warning = [m for m in logs if "WARNING" in m]
    assert len(warning) == 1 and "1 of 2 images are in neither" in warning[0]
    assert summary["saturation_unlisted_examples"][0] in warning[0]
    with open(tmp_path / "w" / "eval" / "rsblur_test" / "per_image.csv") as f:
        assert [r["saturated"] for r in csv.DictReader(f)] == ["True", ""]
    # Another split: no lists to look for, and the summary says why.
    cfg.data = {**cfg.data, "split": "val"}
    summary = runner.run_evaluation(cfg, str(tmp_path / "w"), log=lambda m: None)
    assert "cover the test split only" in summary["saturation_split"]


def test_realblur_set_is_aligned_by_default_and_a_contradicting_protocol_refused(
        tmp_path, monkeypatch):
    from absl import app
    _stand_in(monkeypatch)
    fakes.make_realblur(str(tmp_path / "rb"))
    cfg = eval_config.get_config("tiny")
    cfg.data = {"name": "realblur_j", "root": str(tmp_path / "rb"), "split": "test"}
    cfg.save_images = cfg.grids = False
    logs = []
    summary = runner.run_evaluation(cfg, str(tmp_path / "w"), log=logs.append)
    assert summary["protocol"] == "realblur" and "ecc_failures" in summary
    assert "protocol realblur" in logs[0]
    cfg.protocol = "gopro"
    with pytest.raises(app.UsageError, match="protocol 'gopro' contradicts dataset "
                                             "'realblur_j'") as e:
        runner.evaluate(cfg, str(tmp_path / "w2"))
    assert e.value.exitcode == 2 and not (tmp_path / "w2").exists()


def test_gopro_run_per_channel_and_no_images_saved(tmp_path, monkeypatch):
    _stand_in(monkeypatch)
    fakes.make_gopro(str(tmp_path / "g"), kind="photo")
    cfg = eval_config.get_config("tiny")
    cfg.data = {"name": "gopro", "root": str(tmp_path / "g"), "split": "test"}
    cfg.ssim_mode = "per_channel"
    cfg.save_images = False
    cfg.grids = False
    cfg.output_dir = str(tmp_path / "report")
    summary = runner.run_evaluation(cfg, str(tmp_path / "w"), log=lambda m: None)
    assert summary["restored"]["psnr"] == summary["identity"]["psnr"]
    assert "per-channel" in summary["ssim"]
    assert sorted(os.listdir(tmp_path / "report")) == ["per_image.csv", "per_image.json",
                                                      "summary.json", "summary.md"]


def test_bad_config_is_one_usage_error(tmp_path):
    from absl import app
    cfg = eval_config.get_config("tiny")
    cfg.protocol = "kitti"
    with pytest.raises(app.UsageError, match="unknown protocol 'kitti'") as e:
        runner.evaluate(cfg, str(tmp_path))
    assert e.value.exitcode == 2
    cfg = eval_config.get_config("tiny")
    cfg.tile, cfg.overlap = 32, 40
    with pytest.raises(app.UsageError, match="overlap"):
        runner.evaluate(cfg, str(tmp_path))
    cfg = eval_config.get_config("tiny")
    cfg.data = {"name": "gopro", "root": str(tmp_path / "missing"), "split": "test"}
    with pytest.raises(app.UsageError, match="missing"):
        runner.evaluate(cfg, str(tmp_path))
    cfg = eval_config.get_config("tiny")
    cfg.data = {"name": "synthetic", "root": fakes.make_synthetic(str(tmp_path / "syn")),
                "split": "test"}
    cfg.checkpoint = str(tmp_path / "nockpt")
    with pytest.raises(app.UsageError, match=str(tmp_path / "nockpt")):
        runner.evaluate(cfg, str(tmp_path))


def test_write_rows_keeps_full_precision(tmp_path):
    rows = [{"name": "a", "psnr": 1 / 3, "ssim": 0.1 + 0.2}, {"name": "b", "psnr": float("inf"),
                                                               "ssim": 1.0}]
    csv_path, json_path = reports.write_rows(str(tmp_path), "rows", rows, ["name", "psnr", "ssim"])
    with open(csv_path) as f:
        back = list(csv.DictReader(f))
    assert float(back[0]["psnr"]) == 1 / 3 and float(back[0]["ssim"]) == 0.1 + 0.2
    assert json.loads(open(json_path).read())[1]["psnr"] == float("inf")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp files left


def test_comparison_grid_and_ranking():
    rng = np.random.default_rng(0)
    sharp = rng.random((60, 90, 3)).astype(np.float32)
    blurry = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    grid = reports.comparison_grid(blurry, sharp, sharp, sharp.mean(-1), panel_width=120)
    assert grid.dtype == np.uint8 and grid.shape[1] == 4 * 120 + 3 * 4
    assert grid.shape[0] == 22 + 80 + 4 + 22 + 120
    rows = [{"psnr": 30.0}, {"psnr": float("nan")}, {"psnr": 20.0}, {"psnr": 25.0}]
    assert reports.pick_best_median_worst(rows) == {"best": 0, "median": 3, "worst": 2}


def test_saved_png_holds_the_scored_levels(tmp_path):
    """Float32 values next to the level boundaries (k + 0.5) / 255: rounding x * 255 in float64
    puts 128 of them one level away from the scored float32 levels; the saved PNG must not."""
    from radblur_jax.data.image_io import save_png
    from radblur_jax.eval import metrics, protocols

    mid = ((np.arange(255) + 0.5) / 255).astype(np.float32)
    x = np.concatenate([np.nextafter(mid, np.float32(-1)), mid, np.nextafter(mid, np.float32(2)),
                        np.float32([-0.1, 0.0, 1.0, 1.2])])
    img = np.resize(x, (17, 15, 3)).astype(np.float32)  # 769 values, each at least once
    assert (np.round(x.astype(np.float64) * 255) != np.round(x * np.float32(255))).sum() >= 100
    save_png(str(tmp_path / "r.png"), reports.to_uint(img))
    saved = cv2.cvtColor(cv2.imread(str(tmp_path / "r.png")), cv2.COLOR_BGR2RGB)
    scored = np.asarray(metrics.quantize_uint8(jnp.asarray(img)[None]))[0]
    np.testing.assert_array_equal(saved, np.round(scored * 255).astype(np.uint8))
    np.testing.assert_array_equal(saved.astype(np.float32) / np.float32(255),
                                  protocols.quantize_uint8_np(img))
    assert reports.to_uint(np.float32([0.5, 1.0]), bits=16).tolist() == [32768, 65535]
