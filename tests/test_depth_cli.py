"""`python -m radblur_jax.depth` on scikit-image photos with a tiny converted checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import skimage
import torch
from conftest import rel_err, to_nchw
from PIL import Image

from radblur_jax import depth, preprocess
from radblur_jax.convert import convert_checkpoint, load_pretrained
from radblur_jax.data import image_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKDATA = os.path.join(os.path.dirname(skimage.__file__), "data")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radblur_jax.depth", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(SKDATA, name)).convert("RGB"))


@pytest.fixture(scope="module")
def torch_da():
    from torch_reference import TorchDepthAnything, randomize_
    return randomize_(TorchDepthAnything(), seed=11).eval()


@pytest.fixture(scope="module")
def ckpt(torch_da, tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "da_tiny.pth"
    torch.save(torch_da.state_dict(), src)
    out = tmp_path_factory.mktemp("ckpt") / "da_tiny"
    convert_checkpoint(src, out)
    return out


@pytest.fixture(scope="module")
def loaded(ckpt):
    module, params, _ = load_pretrained(ckpt)
    return module, params


def test_da_v2_size_rule():
    assert preprocess.da_v2_size(512, 512) == (518, 518)
    assert preprocess.da_v2_size(300, 451) == (518, 784)  # chelsea
    assert preprocess.da_v2_size(451, 300) == (784, 518)
    assert preprocess.da_v2_size(400, 600) == (518, 784)  # 55.5 patches: half to even -> 56
    assert preprocess.da_v2_size(518, 763) == (518, 756)  # 54.5 patches: half to even -> 54
    assert preprocess.da_v2_size(1000, 10) == (51800, 518)


def test_cli_518_matches_torch_pipeline(tmp_path, ckpt, torch_da):
    """Depth Anything V2 preprocessing -> model -> align-corners resize back, vs PyTorch."""
    inp = tmp_path / "in"
    inp.mkdir()
    chelsea = photo("chelsea.png")
    Image.fromarray(chelsea).save(inp / "chelsea.png")
    rgba = np.concatenate([chelsea[:150, :200], np.full((150, 200, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(inp / "cat_rgba.png")
    Image.fromarray(chelsea[:150, :200].mean(-1).astype(np.uint8), "L").save(inp / "gray.bmp")
    (inp / "notes.txt").write_text("not an image")
    proc = run_cli("--checkpoint", ckpt, "--input", inp, "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "out")) == [
        "cat_rgba.npy", "cat_rgba.png", "chelsea.npy", "chelsea.png", "gray.npy", "gray.png"]
    for stem, shape in (("chelsea", (300, 451)), ("cat_rgba", (150, 200)), ("gray", (150, 200))):
        d = np.load(tmp_path / "out" / f"{stem}.npy")
        assert d.shape == shape and d.dtype == np.float32 and np.isfinite(d).all()
        vis = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert vis.shape == shape + (3,) and vis.dtype == np.uint8
    x = preprocess.preprocess_da_v2(chelsea)
    assert x.shape == (518, 784, 3)
    with torch.no_grad():
        want = torch_da(to_nchw(x[None]))[0]
        want = torch.nn.functional.interpolate(want[:, None], (300, 451), mode="bilinear",
                                               align_corners=True)[0, 0]
    assert rel_err(np.load(tmp_path / "out" / "chelsea.npy"), want) <= 1e-5
    rgba_out = np.load(tmp_path / "out" / "cat_rgba.npy")  # alpha dropped: same as plain RGB
    Image.fromarray(chelsea[:150, :200]).save(tmp_path / "rgb.png")
    assert depth.main(["--checkpoint", str(ckpt), "--input", str(tmp_path / "rgb.png"),
                       "--output", str(tmp_path / "out2")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out2" / "rgb.npy"), rgba_out)


def test_cli_native_equals_model_output(tmp_path, ckpt, loaded):
    module, params = loaded
    img = photo("astronaut.png")[:224, 100:352]  # 224 x 252: multiples of 14
    Image.fromarray(img).save(tmp_path / "astro.png")
    proc = run_cli("--checkpoint", ckpt, "--input", tmp_path / "astro.png",
                   "--output", tmp_path / "out", "--size", "native")
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out" / "astro.npy")
    assert got.shape == (224, 252) and got.dtype == np.float32
    x = preprocess.normalize_imagenet(img / 255.0)[None]
    want = np.asarray(jax.jit(module.apply)({"params": params}, x).disparity[0])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_cli_native_rejects_odd_size(tmp_path, ckpt):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(photo("coffee.png")[:224, :224]).save(inp / "a_ok.png")
    Image.fromarray(photo("coffee.png")).save(inp / "coffee.jpg")  # 400 x 600
    proc = run_cli("--checkpoint", ckpt, "--input", inp, "--output", tmp_path / "out",
                   "--size", "native")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "coffee.jpg" in err[0] and "multiple of 14" in err[0], proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written before all inputs are validated


def test_corrupt_image_names_file(tmp_path, ckpt, capsys):
    src = tmp_path / "broken.png"
    data = (open(os.path.join(SKDATA, "chelsea.png"), "rb").read())
    src.write_bytes(data[: len(data) // 2])
    assert depth.main(["--checkpoint", str(ckpt), "--input", str(src),
                       "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.png" in err[0] and "cannot decode" in err[0], err
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(preprocess.ImageError, match="junk.jpg"):
        preprocess.load_rgb(tmp_path / "junk.jpg")


def test_photos_are_read_as_depth_anything_reads_them(tmp_path):
    """`load_rgb` gives `cv2.imread`'s pixels (Depth Anything V2's run.py), RGB: a phone
    photo's EXIF rotation applied, a 16-bit PNG reduced as OpenCV reduces it."""
    cv2 = pytest.importorskip("cv2")
    img = photo("chelsea.png")[:40, :60]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.fromarray(img).save(tmp_path / "phone.jpg", quality=95, exif=exif.tobytes())
    got = preprocess.load_rgb(tmp_path / "phone.jpg")
    assert got.shape == (60, 40, 3)
    np.testing.assert_array_equal(got, cv2.imread(str(tmp_path / "phone.jpg"))[:, :, ::-1])
    deep = np.random.default_rng(0).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(preprocess.load_rgb(tmp_path / "deep.png"),
                                  cv2.imread(str(tmp_path / "deep.png"))[:, :, ::-1])


def test_batching_matches_single(tmp_path, loaded):
    module, params = loaded
    predict = depth.make_predictor(module, params)
    inp = tmp_path / "in"
    inp.mkdir()
    for i, name in enumerate(("camera.png", "astronaut.png", "coffee.png")):
        Image.fromarray(photo(name)[:70, 14 * i: 14 * i + 84]).save(inp / f"{i}.png")
    imgs = depth.input_images(str(inp))
    one = depth.run_depth(predict, imgs, str(tmp_path / "b1"), size="native", log=lambda s: None)
    two = depth.run_depth(predict, imgs, str(tmp_path / "b2"), size="native", batch=2,
                          log=lambda s: None)
    for a, b in zip(one, two):
        np.testing.assert_allclose(np.load(a), np.load(b), rtol=1e-5, atol=1e-6)


def test_random_init_smoke_warns(tmp_path, capsys):
    Image.fromarray(photo("chelsea.png")[:28, :42]).save(tmp_path / "c.png")
    assert depth.main(["--random-init", "tiny", "--input", str(tmp_path / "c.png"),
                       "--output", str(tmp_path / "out"), "--size", "native"]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    assert np.load(tmp_path / "out" / "c.npy").shape == (28, 42)
    assert "SMOKE TEST" in depth.build_parser().format_help()


def test_encoder_only_checkpoint_rejected(tmp_path, capsys):
    from torch_reference import TorchDinoViT
    src = tmp_path / "vit.pth"
    torch.save(TorchDinoViT().state_dict(), src)
    convert_checkpoint(src, tmp_path / "vit")
    Image.fromarray(photo("chelsea.png")[:28, :28]).save(tmp_path / "c.png")
    assert depth.main(["--checkpoint", str(tmp_path / "vit"), "--input", str(tmp_path / "c.png"),
                       "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without a depth head" in err[0], err
    assert not (tmp_path / "out").exists()


def test_colorize():
    import cv2
    lut = depth.colormap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_INFERNO)[:, 0]
    np.testing.assert_array_equal(lut, bgr[:, ::-1])  # RGB order
    assert lut[0].sum() < 30 and lut[255].sum() > 600  # inferno: black (far) -> yellow (near)
    assert lut[255, 0] > lut[255, 2]  # red above blue at the bright end: RGB, not BGR
    vis = image_io.colorize_disparity(np.array([[0.0, 1.0], [2.0, 4.0]], np.float32))
    assert vis.shape == (2, 2, 3) and vis.dtype == np.uint8
    assert (vis[0, 0] == lut[0]).all() and (vis[1, 1] == lut[255]).all()
    assert (vis[0, 1] == lut[64]).all()  # 1/4 -> round(63.75)
    constant = image_io.colorize_disparity(np.full((3, 3), 5.0))
    assert (constant == lut[0]).all()  # constant input: no NaN


def _assert_clean_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


@pytest.mark.parametrize("size", ["0", "-14", "abc"])
def test_bad_size_is_one_line(tmp_path, size):
    Image.fromarray(photo("chelsea.png")[:28, :28]).save(tmp_path / "c.png")
    out = tmp_path / "out"
    proc = run_cli("--random-init", "tiny", "--input", tmp_path / "c.png", "--output", out,
                   "--size", size)
    _assert_clean_error(proc, "--size", size)
    assert not out.exists()


def test_size_not_multiple_of_patch_is_one_line(tmp_path, capsys):
    Image.fromarray(photo("chelsea.png")[:28, :28]).save(tmp_path / "c.png")
    out = tmp_path / "out"
    assert depth.main(["--random-init", "tiny", "--input", str(tmp_path / "c.png"),
                       "--output", str(out), "--size", "500"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --size 500") and "patch size 14" in err[0]
    assert not out.exists()


def test_output_naming_a_file_is_one_line(tmp_path):
    Image.fromarray(photo("chelsea.png")[:28, :28]).save(tmp_path / "c.png")
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    for out in (target, target / "sub"):
        proc = run_cli("--random-init", "tiny", "--input", tmp_path / "c.png", "--output", out)
        _assert_clean_error(proc, "--output", target)
    assert target.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["c.png", "taken.txt"]


def test_help_lists_every_suffix_and_log_names_both_outputs(tmp_path):
    helptext = " ".join(depth.build_parser().format_help().split())
    for suffix in preprocess.IMAGE_SUFFIXES:
        assert suffix.lstrip(".") in helptext, suffix
    Image.fromarray(photo("chelsea.png")[:28, :42]).save(tmp_path / "c.png")
    lines = []
    predict = depth.make_predictor(*depth.random_depth_model("tiny"))
    depth.run_depth(predict, [str(tmp_path / "c.png")], str(tmp_path / "out"), size="native",
                    log=lines.append)
    assert len(lines) == 1
    for suffix in (".npy", ".png"):
        assert str(tmp_path / "out" / ("c" + suffix)) in lines[0], lines[0]
