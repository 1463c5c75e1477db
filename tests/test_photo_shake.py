"""Tests for the real-photo camera-shake check set (photo_shake module and its CLI)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage  # noqa: F401  (a hard dependency: photo_shake reads its photos from skimage/data)

from radblur_jax.data.sources import make_source
from radblur_jax.data.synthetic import photo_shake
from radblur_jax.data.synthetic.photo_shake import shake_pair, shake_photo, write_photo_shake_set
from radblur_jax.data.synthetic.render import SyntheticParams
from radblur_jax.data.synthetic.scene import srgb_to_linear

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tools" / "make_photo_shake_set.py"
STILL = dict(max_shift=0.0, pan_shift=0.0, max_rotation_deg=0.0, noise_prob=0.0)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two [0, 1] images after 8-bit quantisation."""
    a8, b8 = (np.rint(np.clip(x, 0, 1) * 255).astype(np.float64) for x in (a, b))
    return float(10 * np.log10(255.0 ** 2 / np.mean((a8 - b8) ** 2)))


def _laplacian_energy(img: np.ndarray) -> float:
    return float(np.mean(cv2.Laplacian(img.mean(-1).astype(np.float32), cv2.CV_32F) ** 2))


def _centre_crop(photo: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, x0 = (photo.shape[0] - h) // 2, (photo.shape[1] - w) // 2
    return photo[y0:y0 + h, x0:x0 + w]


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return photo_shake.load_photo("chelsea.png")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return photo_shake.load_photo("astronaut.png")


def test_same_seed_same_pair_other_seed_other_pair(chelsea):
    params = SyntheticParams(height=72, width=104)
    a, b = shake_pair(chelsea, 5, params), shake_pair(chelsea, np.random.default_rng(5), params)
    c = shake_pair(chelsea, 6, params)
    for key in ("blur", "sharp", "trajectory"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["blur"].shape == a["sharp"].shape == (72, 104, 3)
    assert a["blur"].dtype == np.float32
    np.testing.assert_array_equal(a["sharp"], c["sharp"])  # same crop, other trajectory
    assert np.abs(a["blur"] - c["blur"]).mean() > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blur_is_blurred(astronaut, chelsea, seed):
    params = SyntheticParams(height=128, width=160, noise_prob=0.0)
    for photo in (astronaut, chelsea):
        pair = shake_pair(photo, seed, params)
        assert 18.0 <= _psnr(pair["blur"], pair["sharp"]) <= 35.0
        # Camera shake removes fine detail: much less Laplacian energy than the sharp crop.
        assert _laplacian_energy(pair["blur"]) < 0.6 * _laplacian_energy(pair["sharp"])


def test_zero_motion_reproduces_the_sharp_crop(chelsea):
    params = SyntheticParams(height=96, width=136, saturation_prob=0.0, **STILL)
    pair = shake_pair(chelsea, 3, params)
    np.testing.assert_array_equal(pair["blur"], pair["sharp"])
    crop8 = np.rint(_centre_crop(chelsea, 96, 136) * 255)
    # sRGB -> linear -> sRGB round trip: equal after 8-bit rounding.
    assert np.abs(np.rint(pair["sharp"] * 255) - crop8).max() <= 1.0
    # An explicit all-zero trajectory of several sub-frames gives the same.
    blur, sharp = shake_photo(chelsea, np.zeros((9, 5), np.float32), 96, 136)
    np.testing.assert_allclose(blur, sharp, atol=1e-6)  # mean of 9 equal float32 frames


def test_uint8_photo_and_pure_translation(chelsea):
    photo8 = np.rint(chelsea * 255).astype(np.uint8)
    traj = np.zeros((3, 5), np.float32)
    traj[:, 0] = [-2.0, 0.0, 2.0]  # three poses: shifted left, centre, shifted right
    blur, sharp = shake_photo(photo8, traj, 64, 80)
    blur_f, _ = shake_photo(photo8.astype(np.float32) / 255.0, traj, 64, 80)
    np.testing.assert_array_equal(blur, blur_f)
    # Same as averaging three integer shifts of the linear photo (warp of +x samples x - 2).
    lin = srgb_to_linear(chelsea)
    y0, x0 = (chelsea.shape[0] - 64) // 2, (chelsea.shape[1] - 80) // 2
    expected = sum(lin[y0:y0 + 64, x0 - d:x0 - d + 80] for d in (-2, 0, 2)) / 3.0
    assert np.abs(blur - expected).max() < 1e-5
    np.testing.assert_allclose(sharp, lin[y0:y0 + 64, x0:x0 + 80], atol=1e-6)


def test_bad_photo_is_refused(chelsea):
    with pytest.raises(ValueError, match="smaller than the crop"):
        shake_photo(chelsea, np.zeros((1, 5), np.float32), 400, 64)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        shake_photo(chelsea[..., 0], np.zeros((1, 5), np.float32), 32, 32)


def test_written_set_reads_as_paired_folder(tmp_path, chelsea):
    photos = ("chelsea.png", "rocket.jpg")
    root = write_photo_shake_set(tmp_path / "shake", size=(48, 64), per_photo=2, seed=7,
                                 photos=photos)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shake"]  # no temp folder left
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == photo_shake.FORMAT and manifest["seed"] == 7
    assert manifest["photos"] == list(photos) and manifest["size"] == [48, 64]
    assert [p["file"] for p in manifest["pairs"]] == [
        "chelsea_00.png", "chelsea_01.png", "rocket_00.png", "rocket_01.png"]
    source = make_source({"name": "paired_folder", "root": str(root)})
    assert len(source) == 4
    examples = [source[i] for i in range(len(source))]
    by_name = {Path(str(e["name"])).stem: e for e in examples}
    ex = by_name["chelsea_01"]
    assert ex["blur"].shape == ex["sharp"].shape == (48, 64, 3)
    # The files are the 8-bit images of the pair drawn from pair_seed(seed, photo index, k).
    params = SyntheticParams(height=48, width=64)
    pair = shake_pair(chelsea, photo_shake.pair_seed(7, 0, 1), params)
    np.testing.assert_allclose(ex["blur"], np.rint(pair["blur"] * 255) / 255, atol=1e-6)
    np.testing.assert_allclose(ex["sharp"], np.rint(pair["sharp"] * 255) / 255, atol=1e-6)
    # Same seed, same bytes.
    again = write_photo_shake_set(tmp_path / "again", size=(48, 64), per_photo=2, seed=7,
                                  photos=photos)
    for sub in ("input", "target"):
        for f in sorted((root / sub).iterdir()):
            assert f.read_bytes() == (again / sub / f.name).read_bytes()


def test_writer_refuses_existing_root_and_leaves_nothing(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        write_photo_shake_set(tmp_path / "taken", size=32, per_photo=1, photos=("coffee.png",))
    with pytest.raises(ValueError, match="chelsea.png: photo 300x451 is smaller"):
        write_photo_shake_set(tmp_path / "big", size=320, per_photo=1, photos=("chelsea.png",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_params_other_than_size_are_kept(tmp_path):
    params = dataclasses.replace(SyntheticParams(), noise_prob=0.0, max_shift=0.02)
    root = write_photo_shake_set(tmp_path / "s", size=40, per_photo=1, photos=("coffee.png",),
                                 params=params)
    saved = json.loads((root / "manifest.json").read_text())["params"]
    assert saved["noise_prob"] == 0.0 and saved["max_shift"] == 0.02 and saved["height"] == 40


@pytest.mark.parametrize("args, flag", [
    (["--size", "12y"], "--size"),
    (["--size", "320x320"], "--size"),
    (["--per-photo", "0"], "--per-photo"),
    (["--seed", "-1"], "--seed"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, flag):
    spec = importlib.util.spec_from_file_location("make_photo_shake_set", CLI)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as info:
        cli.main(["--output", str(tmp_path / "out"), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_cli_writes_a_set_and_refuses_to_overwrite(tmp_path):
    cmd = [sys.executable, str(CLI), "--output", str(tmp_path / "out"), "--size", "40x56",
           "--per-photo", "1", "--seed", "3"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "input").glob("*.png"))) == len(photo_shake.PHOTOS)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert again.returncode == 2
    assert "argument --output" in again.stderr and "Traceback" not in again.stderr
