"""The depth ablation's plumbing (tools/ablation.py): commands, scores, aggregation, the report.

No training here: the runs are faked as the result.json files the runner writes, so these check
what is computed from them (the study itself is run by hand; docs/results.md).
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from radblur_jax.ablation import aggregate, measure, plot, report, runner
from radblur_jax.ablation.plan import Plan


def _texture(rng: np.random.Generator, h: int = 64, w: int = 64) -> np.ndarray:
    noise = rng.random((h // 4, w // 4, 3)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST)


def test_commands_set_fusion_and_init(tmp_path):
    plan = Plan(out=tmp_path, seeds=(3,))
    mix = plan.mixes[1]
    by_name = {v.name: plan.stage_b_command(mix, v, 3) for v in plan.variants}
    for name, cmd in by_name.items():
        text = " ".join(cmd)
        fusion = "attention" if name in "bc" else "none"
        assert f"--config.model.decoder.depth_fusion={fusion}" in cmd
        assert ("--config.init.checkpoint=" in text) == (name in "cd")
        assert "--config.seed=3" in cmd
        assert f"--config.data.root={tmp_path / 'data' / mix.name}" in cmd
    assert f"--config.init.checkpoint={plan.stage_a_dir(mix, 3)}" in by_name["c"]
    assert plan.data_root(plan.mixes[0]) == ""  # the built-in set


def test_blur_by_depth_sees_where_the_blur_is():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(2):
        sharp = _texture(rng)
        blur = cv2.GaussianBlur(sharp, (0, 0), 0.5)  # far: a little
        blur[:, :32] = cv2.GaussianBlur(sharp, (0, 0), 3.0)[:, :32]  # left half: near, blurred
        depth = np.full((64, 64), 10.0, np.float32)
        depth[:, :32] = 1.0
        pairs.append({"sharp": sharp, "blur": blur, "depth": depth})
    b = measure.blur_by_depth(pairs)
    assert b["near"] > 0.5
    assert 0 < b["far"] < b["near"] / 2
    assert b["ratio"] == pytest.approx(b["near"] / b["far"])
    flat = [{**p, "blur": p["sharp"]} for p in pairs]
    assert math.isnan(measure.blur_by_depth(flat)["ratio"])


def test_scores_of_an_identity_and_a_perfect_restorer():
    rng = np.random.default_rng(1)
    sharp = np.round(_texture(rng) * 255) / 255  # 8-bit, as the test sets are
    blur = np.clip(sharp + 0.05 * rng.standard_normal(sharp.shape), 0, 1).astype(np.float32)
    blur = np.round(blur * 255) / 255
    depth = np.linspace(1.0, 10.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    pair = {"sharp": sharp, "blur": blur.astype(np.float32), "depth": depth}
    same = measure.score_restorations(lambda x: x, [pair], near=1.0)[0]
    assert same["psnr"] == pytest.approx(same["blurry_psnr"], abs=1e-4)
    assert sum(b[2] for b in same["bins"].values()) == 64 * 64
    r = 1.0 / depth
    assert same["bins"]["near"][2] == int((r >= 2 / 3).sum())
    perfect = measure.score_restorations(lambda x: sharp[None], [pair], near=1.0)[0]
    assert perfect["psnr"] > 100 and perfect["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert all(b[0] < 1e-10 for b in perfect["bins"].values())


def test_flat_depth_floor():
    depth = np.full((8, 8), 3.0)
    assert measure.flat_scores(depth, depth > 0) == (0.0, 1.0)
    depth[:, 4:] = 6.0  # disparities 1/3 and 1/6: the flat fit is 4 (harmonic mean)
    abs_rel, delta1 = measure.flat_scores(depth, depth > 0)
    assert abs_rel == pytest.approx((1 / 3 + 2 / 6) / 2) and delta1 == 0.0
    d, valid = measure.motorcycle_depth()
    assert d.shape == valid.shape == (500, 741) and 0.9 < valid.mean() < 0.95
    assert 1500 < d[valid].min() < d[valid].max() < 6500  # mm: the bike and the wall behind


def test_residual_scales_pick_the_zero_initialised_scales():
    params = {"decoder": {"sub_decoders": {
        "ada_0": {"scale": np.full((2, 4), 0.5), "norm": {"scale": np.ones((2, 4))}},
        "ada_1": {"scale": np.zeros((2, 4))},
        "blocks_0": {"beta": np.full((2, 4), 2.0), "gamma": np.full((2, 4), 2.0),
                     "conv": {"kernel": np.ones(3)}}}}}
    got = measure.residual_scales(params)
    assert got["fusion"] == pytest.approx(math.sqrt(0.125)) and got["blocks"] == 2.0
    del params["decoder"]["sub_decoders"]["ada_0"], params["decoder"]["sub_decoders"]["ada_1"]
    assert math.isnan(measure.residual_scales(params)["fusion"])


def test_paired_verdicts():
    assert aggregate.verdict([0.0, 0.0, 0.0]) == "identical"
    assert aggregate.verdict([0.30, 0.31, 0.29]) == "better"
    assert aggregate.verdict([-0.30, -0.31, -0.29]) == "worse"
    assert aggregate.verdict([0.3, -0.2, 0.1]) == "within the spread"
    assert aggregate.verdict([0.3]) == "too few seeds"
    assert aggregate.t_stat([1.0, 2.0, 3.0]) == pytest.approx(2.0 / (1.0 / math.sqrt(3)))


def _fake_results(plan: Plan, gain: dict[str, float]) -> None:
    """result.json files as the runner writes them: variant v scores `gain[v]` dB above a
    per-seed base, near pixels twice that."""
    rng = np.random.default_rng(0)
    for job in runner.jobs(plan):
        wd = runner.workdir(plan, job)
        wd.mkdir(parents=True)
        common = {"job": job.label, "mix": job.mix.name, "seed": job.seed,
                  "variant": job.variant.name if job.variant else None, "commit": "abc",
                  "machine": "test machine", "seconds": 10.0, "train_seconds": 8.0,
                  "curve": {"step": [10, 20], "loss": [0.2, 0.1], "val_step": [20],
                            "val": [24.0 + job.seed]}}
        if job.variant is None:
            d = {"abs_rel": 0.5, "delta1": 0.3}
            common["depth"] = {"untrained": {"synthetic": d, "motorcycle": d},
                               "stage_a": {"synthetic": {"abs_rel": 0.4, "delta1": 0.4},
                                           "motorcycle": {"abs_rel": 0.45, "delta1": 0.35}}}
        else:
            g = gain[job.variant.name] + 0.01 * job.seed
            images = []
            for i in range(6):
                mse = 10 ** (-(25.0 + g + 0.1 * i) / 10)
                near_mse = 10 ** (-(25.0 + 2 * g) / 10)
                images.append({"psnr": 25.0 + g + 0.1 * i, "ssim": 0.8, "blurry_psnr": 20.0 + i,
                               "bins": {"far": [mse * 50, 40.0, 50], "middle": [mse * 30, 24.0, 30],
                                        "near": [near_mse * 20, 16.0, 20]}})
            common["images"] = images
            common["photos"] = {"psnr": 23.0 + g, "ssim": 0.7, "blurry_psnr": 22.0,
                                "count": 24}
            common["residual_scales"] = {"fusion": 0.01 if job.variant.fusion else float("nan"),
                                         "blocks": 0.02}
        (wd / runner.RESULT).write_text(json.dumps(common))
    for mix in plan.mixes:
        (plan.out / "data").mkdir(exist_ok=True)
        (plan.out / "data" / f"{mix.name}.json").write_text(json.dumps(
            {"blur_by_depth": {"near": 0.5, "far": 0.25, "ratio": 2.0}, "test_pairs": 6,
             "test_blurry_psnr": float(rng.uniform(20, 25)),
             "flat_depth": {"synthetic": {"abs_rel": 0.6, "delta1": 0.1},
                            "motorcycle": {"abs_rel": 0.23, "delta1": 0.49}}}))


def test_report_from_saved_runs_is_reproducible(tmp_path):
    plan = Plan(out=tmp_path / "out")
    _fake_results(plan, {"a": 0.0, "b": 0.0, "c": 0.5, "d": 0.0})
    first = report.write_report(plan, str(tmp_path / "r1" / "results.md"))
    text = open(first).read()
    again = report.write_report(plan, str(tmp_path / "r1" / "results.md"))
    assert open(again).read() == text
    png = (tmp_path / "r1" / "results_curves.png").read_bytes()
    report.write_report(plan, str(tmp_path / "r1" / "results.md"))
    assert (tmp_path / "r1" / "results_curves.png").read_bytes() == png
    # (c) - (a): +0.5 dB overall and on photos, +1.0 dB near, consistent over the 3 seeds.
    assert "| (c) - (a): pretrained depth + fusion vs neither | PSNR | 0.500 ± 0.000" in text
    assert "+0.500 dB on the whole test images (better, 3/3 seeds positive)" in text
    assert "+1.000 dB in the near bin (better" in text
    assert "| (c) - (d): fusion, given the pretrained encoder | photos PSNR | 0.500" in text
    assert ("| (b) - (a): fusion alone (random encoder) | PSNR | 0.000 ± 0.000 | +0.000, +0.000, "
            "+0.000 | - | identical |") in text
    assert "(d) and (a) restore identically with every seed" in text
    assert "stage A AbsRel" in text and "0.400 ± 0.000" in text
    assert "| (a) random encoder, fusion off | 3 | - | 0.0200 ± 0.0000 |" in text


def test_rerun_skips_finished_jobs_and_settings_must_match(tmp_path, monkeypatch):
    plan = Plan(out=tmp_path, seeds=(0, 1))
    report.check_plan_file(plan)
    done = runner.jobs(plan)[:3]
    for job in done:
        runner.workdir(plan, job).mkdir(parents=True)
        (runner.workdir(plan, job) / runner.RESULT).write_text("{}")
    ran = []
    monkeypatch.setattr(runner, "run_job", lambda p, j: ran.append(j.label))
    runner.run_all(plan)
    assert ran == [j.label for j in runner.jobs(plan)[3:]]
    with pytest.raises(ValueError, match="stage_b_steps"):
        report.check_plan_file(Plan(out=tmp_path, seeds=(0, 1), stage_b_steps=7))


def test_charts_are_deterministic(tmp_path):
    panels = [("t", "step", [("x", [0, 1, 2], [1.0, 3.0, 2.0]), ("y", [0, 2], [2.0, 2.5])])]
    plot.save_charts(str(tmp_path / "a.png"), panels)
    plot.save_charts(str(tmp_path / "b.png"), panels)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert cv2.imread(str(tmp_path / "a.png")).shape == (280, 840, 3)
