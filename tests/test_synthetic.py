"""Tests for the depth-aware synthetic blur generator and its dataset writer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from radblur_jax.data.synthetic import writer
from radblur_jax.data.synthetic.render import SyntheticParams, render_layers, render_pair
from radblur_jax.data.synthetic.scene import linear_to_srgb, make_layer, srgb_to_linear

REPO = Path(__file__).resolve().parents[1]
STILL = dict(max_shift=0.0, pan_shift=0.0, max_rotation_deg=0.0, noise_prob=0.0)
TRANSLATION_ONLY = dict(pan_shift=0.0, max_rotation_deg=0.0, noise_prob=0.0, saturation_prob=0.0)


def _two_layer_pair(seed: int, shift: float, height: int = 96, width: int = 192,
                    near: float = 1.0, far: float = 10.0):
    """Near plane (depth 1) on the left half, far plane (depth 10) behind; horizontal camera
    translation of ``shift`` pixels for the near plane. Returns sRGB blur, sharp."""
    rng = np.random.default_rng(seed)
    m = 40
    background = make_layer(rng, np.ones((height + 2 * m, width + 2 * m), np.float32), -m, -m,
                            far, opaque=True)
    foreground = make_layer(rng, np.ones((height + 2 * m, width // 2 + m), np.float32), -m, -m,
                            near)
    trajectory = np.zeros((49, 5), np.float32)
    trajectory[:, 0] = np.linspace(-shift / 2, shift / 2, 49)
    blur, sharp = render_layers([background, foreground], trajectory, height, width, near)
    return linear_to_srgb(blur), linear_to_srgb(sharp)


def _box_width(blur: np.ndarray, sharp: np.ndarray, max_width: int = 30) -> int:
    """Width of the horizontal box kernel that best maps sharp to blur (in linear light)."""
    b, s = srgb_to_linear(blur), srgb_to_linear(sharp)
    errors = []
    for w in range(1, max_width + 1):
        pred = cv2.filter2D(s, -1, np.ones((1, w), np.float32) / w, borderType=cv2.BORDER_REFLECT)
        errors.append(np.mean((pred - b)[:, max_width:-max_width] ** 2))
    return int(np.argmin(errors)) + 1


def _gradient_energy(img: np.ndarray, direction=(1.0, 0.0)) -> np.ndarray:
    """Squared derivative of the grey image along ``direction`` (x, y), per pixel."""
    gray = img.mean(-1)
    grad = (direction[0] * cv2.Sobel(gray, cv2.CV_32F, 1, 0)
            + direction[1] * cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    return grad ** 2


@pytest.mark.parametrize("seed", [0, 1])
def test_near_plane_blurs_more_than_far_plane(seed):
    height, width, shift = 96, 192, 24.0
    blur, sharp = _two_layer_pair(seed, shift, height, width)
    near_cols, far_cols = slice(0, width // 2 - 14), slice(width // 2 + 14, width)
    # Estimated motion-kernel width: 24 px at depth 1, 2.4 px at depth 10.
    near_width = _box_width(blur[:, near_cols], sharp[:, near_cols])
    far_width = _box_width(blur[:, far_cols], sharp[:, far_cols])
    assert 21 <= near_width <= 28, near_width
    assert far_width <= 5, far_width
    # Gradient energy kept by the blur (1 = sharp): much lower on the near plane.
    gb, gs = _gradient_energy(blur), _gradient_energy(sharp)
    near = (slice(8, height - 8), slice(8, width // 2 - 20))
    far = (slice(8, height - 8), slice(width // 2 + 20, width - 8))
    near_ratio, far_ratio = gb[near].mean() / gs[near].mean(), gb[far].mean() / gs[far].mean()
    assert near_ratio < 0.5 * far_ratio, (near_ratio, far_ratio)


def test_blur_grows_as_depth_shrinks_in_random_scenes():
    params = SyntheticParams(height=128, width=128, num_layers=6, max_shift=0.1, min_motion=1.0,
                             radius_range=(0.2, 0.4), **TRANSLATION_ONLY)
    depths, ratios = [], []
    for seed in range(8):
        pair = render_pair(seed, params)
        path = pair["trajectory"][:, :2] - pair["trajectory"][:, :2].mean(0)
        direction = np.linalg.svd(path, full_matrices=False)[2][0]  # main motion direction
        reach = int(np.abs(pair["trajectory"][:, :2]).max()) + 3
        kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
        gb = _gradient_energy(pair["blur"], direction)
        gs = _gradient_energy(pair["sharp"], direction)
        for depth in np.unique(pair["depth"]):
            # Pixels of this plane that no other plane (or the outside of the frame) reaches.
            region = cv2.erode((pair["depth"] == depth).astype(np.uint8), kernel,
                               borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
            if region.sum() >= 200 and gs[region].mean() > 1e-3:  # enough textured pixels
                depths.append(depth)
                ratios.append(gb[region].mean() / gs[region].mean())
    depths, ratios = np.array(depths), np.array(ratios)
    assert (depths < 2).sum() >= 3 and (depths == 10).sum() >= 3
    assert ratios[depths < 2].mean() < 0.5 * ratios[depths == 10].mean()
    assert spearmanr(depths, ratios).statistic > 0.6


def test_render_pair_values_and_determinism():
    params = SyntheticParams(height=48, width=64, noise_prob=1.0, saturation_prob=1.0)
    pair = render_pair(7, params)
    assert pair["blur"].shape == pair["sharp"].shape == (48, 64, 3)
    assert pair["depth"].shape == (48, 64)
    for key in ("blur", "sharp", "depth", "trajectory"):
        assert pair[key].dtype == np.float32
    for key in ("blur", "sharp"):
        assert 0.0 <= pair[key].min() and pair[key].max() <= 1.0
    assert params.depth_range[0] <= pair["depth"].min() <= pair["depth"].max() <= 10.0
    traj = pair["trajectory"]
    assert traj.shape[1] == 5 and len(traj) % 2 == 1
    np.testing.assert_array_equal(traj[len(traj) // 2], 0.0)
    again = render_pair(7, params)
    for key in pair:
        np.testing.assert_array_equal(pair[key], again[key])
    assert not np.array_equal(pair["blur"], render_pair(8, params)["blur"])


@pytest.mark.parametrize("saturation_prob", [0.0, 1.0])
def test_zero_motion_gives_blur_equal_to_sharp(saturation_prob):
    params = SyntheticParams(height=64, width=80, saturation_prob=saturation_prob, **STILL)
    pair = render_pair(3, params)
    blur = np.rint(pair["blur"] * 255).astype(int)
    sharp = np.rint(pair["sharp"] * 255).astype(int)
    assert np.abs(blur - sharp).max() <= 1
    assert len(np.unique(pair["depth"])) > 1  # a real layered scene


def test_noise_is_added_to_blur_only():
    params = SyntheticParams(height=64, width=64, **{**STILL, "noise_prob": 1.0},
                             shot_noise=0.01, read_noise=0.005)
    pair = render_pair(5, params)
    diff = pair["blur"] - pair["sharp"]
    assert 0.0 < np.abs(diff).mean() < 0.1


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_params():
    return SyntheticParams(height=32, width=48, num_layers=4)


def test_dataset_layout_manifest_and_determinism(tmp_path, tiny_params):
    kw = dict(num_train=5, num_test=2, params=tiny_params, frames_per_scene=2)
    summary = writer.write_dataset(tmp_path / "a", seed=3, **kw)
    writer.write_dataset(tmp_path / "b", seed=3, workers=2, **kw)
    writer.write_dataset(tmp_path / "c", seed=4, **kw)
    a, b, c = (_tree_hash(tmp_path / n) for n in "abc")
    assert a == b  # same seed -> same bytes, whatever the worker count
    assert a.keys() == c.keys() and a != c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp dirs left

    root = tmp_path / "a"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest == summary["manifest"] == writer.read_manifest(root)
    assert manifest["splits"] == {"train": {"pairs": 5, "scenes": 3},
                                  "test": {"pairs": 2, "scenes": 1}}
    assert manifest["seed"] == 3 and manifest["version"] == writer.VERSION
    assert SyntheticParams(**manifest["params"]) == tiny_params
    expected = {"manifest.json"}
    for split, n in (("train", 5), ("test", 2)):
        for i in range(n):
            expected |= set(writer.pair_paths(split, i, 2).values())
    assert set(a) == expected
    assert "train/scene_002/blur/000004.png" in a
    img = cv2.imread(str(root / "train/scene_002/sharp/000004.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32, 48, 3) and img.dtype == np.uint8
    depth = np.load(root / "test/scene_000/depth/000001.npy")
    assert depth.shape == (32, 48) and depth.dtype == np.float32 and depth.min() >= 1.0
    # Pixels on disk match the renderer for that pair's seed.
    pair = render_pair(writer.pair_seed(3, "test", 1), tiny_params)
    blur = cv2.imread(str(root / "test/scene_000/blur/000001.png"))[..., ::-1]
    np.testing.assert_array_equal(blur, np.rint(pair["blur"] * 255).astype(np.uint8))
    np.testing.assert_array_equal(depth, pair["depth"])


def test_writer_refuses_to_overwrite(tmp_path, tiny_params):
    root = tmp_path / "set"
    writer.write_dataset(root, 1, 1, tiny_params, seed=0)
    with pytest.raises(FileExistsError):
        writer.write_dataset(root, 1, 1, tiny_params, seed=1)
    writer.write_dataset(root, 2, 1, tiny_params, seed=1, overwrite=True)
    assert writer.read_manifest(root)["splits"]["train"]["pairs"] == 2
    other = tmp_path / "not_a_dataset"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        writer.write_dataset(other, 1, 1, tiny_params, overwrite=True)
    assert (other / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dataset", "set"]


def test_ensure_default_synthetic_generates_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("RADBLUR_DATA", str(tmp_path / "data"))
    small = dict(num_train=2, num_test=1, size=32)
    root = writer.ensure_default_synthetic(**small)
    assert root == tmp_path / "data" / "synthetic-v1"
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert writer.ensure_default_synthetic(**small) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    writer.ensure_default_synthetic(**{**small, "num_train": 3})  # other settings: regenerated
    assert writer.read_manifest(root)["splits"]["train"]["pairs"] == 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["synthetic-v1"]


def test_ensure_default_synthetic_defaults_are_the_embedded_set(tmp_path, monkeypatch):
    """Without size/count arguments it asks for 64/16 pairs at 256x256 (checked without
    rendering them: the call stops at the first pair)."""
    calls = []

    def stop(*args, **kwargs):
        calls.append((args, kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_pair", stop)
    with pytest.raises(KeyboardInterrupt):
        writer.ensure_default_synthetic(tmp_path / "set")
    (_, split, index, seed, params, fps), _ = calls[0]
    assert (split, index, seed, fps) == ("train", 0, 0, 8)
    assert (params.height, params.width) == (256, 256)
    assert list(tmp_path.iterdir()) == []  # interrupted: no target, no temp folder


_NO_MAIN_GUARD = """
import sys
from radblur_jax.data.synthetic import ensure_default_synthetic
root = ensure_default_synthetic(sys.argv[1], num_train=3, num_test=2, size=24, workers={workers})
print("ROOT", root)
"""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("how", ["script", "stdin"])
def test_ensure_default_synthetic_from_a_script_without_main_guard(tmp_path, workers, how):
    code = _NO_MAIN_GUARD.format(workers=workers)
    target = tmp_path / "set"
    if how == "script":
        (tmp_path / "script.py").write_text(code)
        cmd, stdin = [sys.executable, str(tmp_path / "script.py"), str(target)], None
    else:
        cmd, stdin = [sys.executable, "-", str(target)], code
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"ROOT {target}" in result.stdout
    manifest = writer.read_manifest(target)
    assert manifest["splits"] == {"train": {"pairs": 3, "scenes": 1},
                                  "test": {"pairs": 2, "scenes": 1}}
    files = [p for p in target.rglob("*") if p.is_file()]
    assert len(files) == 1 + 3 * (3 + 2)  # manifest + blur/sharp/depth per pair
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["set"] + (["script.py"] if how == "script" else []))


def test_a_failing_render_leaves_nothing_behind(tmp_path, monkeypatch, tiny_params):
    real = writer.write_pair

    def fail_third(tmp_root, split, index, *rest):
        if index == 2:
            raise RuntimeError("boom")
        return real(tmp_root, split, index, *rest)

    monkeypatch.setattr(writer, "write_pair", fail_third)
    with pytest.raises(RuntimeError, match="boom"):
        writer.write_dataset(tmp_path / "set", 4, 1, tiny_params)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_generation_leaves_no_target(tmp_path):
    """SIGKILL mid-way (no cleanup runs): the target never appears; only the hidden temp folder
    is left beside it."""
    code = ("import sys\nfrom radblur_jax.data.synthetic import writer, SyntheticParams\n"
            "writer.write_dataset(sys.argv[1], 500, 0, SyntheticParams(height=32, width=32))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "set")],
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for _ in range(1200):  # wait until some pairs are on disk (at most ~2 min)
            started = any(tmp_path.glob(".set.tmp-*/train/scene_000/blur/*.png"))
            if started or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "finished before it could be killed"
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "set").exists()
    assert [p.name.startswith(".set.tmp-") for p in tmp_path.iterdir()] == [True]


def test_a_failing_worker_leaves_nothing_behind(tmp_path):
    bad = SyntheticParams(height=32, width=32)
    object.__setattr__(bad, "num_layers", -1)  # slips past this process; the workers reject it
    with pytest.raises(RuntimeError, match=r"synthetic worker \d exited with 1: .*num_layers"):
        writer.write_dataset(tmp_path / "set", 3, 1, bad, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_a_tiny_set(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools" / "make_synthetic_dataset.py"), "--output", str(out),
           "--num-train", "2", "--num-test", "1", "--size", "24x40", "--seed", "5",
           "--set", "num_layers=3"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 2 pairs" in result.stdout and "pairs/s" in result.stdout
    manifest = writer.read_manifest(out)
    assert manifest["params"]["height"] == 24 and manifest["params"]["num_layers"] == 3
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert again.returncode == 2 and "--output" in again.stderr and "already exists" in again.stderr


@pytest.mark.parametrize("args, flag, words", [
    (["--size", "0x0"], "--size", "at least 8x8"),
    (["--size", "256by256"], "--size", "expected HxW"),
    (["--num-train", "-3"], "--num-train", ">= 0"),
    (["--workers", "0"], "--workers", ">= 1"),
    (["--set", "max_shift=abc"], "--set", "max_shift: expected a number"),
    (["--set", "depth_range=[1]"], "--set", "depth_range: expected a list of 2 numbers"),
    (["--set", "depth_range=[5,1]"], "--set", "depth_range: expected 0 < near <= far"),
    (["--set", "nope=1"], "--set", "KEY one of"),
    (["--set", "num_layers=-1"], "--set", "num_layers: expected >= 0"),
    (["--set", "noise_prob=2"], "--set", "noise_prob: expected in [0, 1]"),
])
def test_cli_bad_arguments(tmp_path, args, flag, words):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_synthetic_dataset.py"),
                             "--output", str(out)] + args,
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"make_synthetic_dataset.py: error: argument {flag}: ")
    assert words in last and last.count(flag) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_params_round_trip_through_json():
    params = SyntheticParams(depth_range=[2, 20], saturation_gain=(1.0, 2.0))
    assert params.depth_range == (2.0, 20.0)
    restored = SyntheticParams(**json.loads(json.dumps(dataclasses.asdict(params))))
    assert restored == params
    with pytest.raises(ValueError):
        SyntheticParams(depth_range=(5.0, 1.0))


def test_a_set_published_meanwhile_is_kept_not_swapped(tmp_path):
    """Processes regenerating a stale default set at once: the last to finish finds the very
    set it rendered already in place (another process may be reading it) and keeps it."""
    kw = dict(num_train=1, num_test=1, params=SyntheticParams(height=32, width=32),
              frames_per_scene=2)
    writer.write_dataset(tmp_path / "a", seed=3, **kw)
    marker = tmp_path / "a" / "in_use"
    marker.write_text("opened by another process")
    writer.write_dataset(tmp_path / "a", seed=3, overwrite=True, **kw)
    assert marker.exists()  # the same folder, not a fresh copy moved into its place
    writer.write_dataset(tmp_path / "a", seed=4, overwrite=True, **kw)
    assert not marker.exists()  # another set: replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
