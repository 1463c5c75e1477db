"""The deblur CLI: modes, bit depths, alpha, EXIF orientation, bad files, never overwriting.

I/O behaviour is checked exactly with an identity restorer (outputs must equal inputs); one slow
test runs the real CLI with RADBlur-tiny on the same folder.
"""
from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from radblur_jax import deblur
from radblur_jax.eval import photos

H, W = 24, 40


def _identity(x):
    return x, x.mean(-1)


@pytest.fixture()
def photo_dir(tmp_path):
    """gray (8-bit), RGBA (8-bit, varying alpha), RGB 16-bit, a corrupt PNG and a JPEG stored
    sideways with EXIF orientation 6; all H x W once upright."""
    d = tmp_path / "in"
    d.mkdir()
    astro = data.astronaut()
    gray = data.camera()[200:200 + H, 150:150 + W]
    cv2.imwrite(str(d / "gray.png"), gray)
    rgba = np.concatenate([astro[:H, 200:200 + W], np.linspace(0, 255, H * W).reshape(H, W, 1)
                           .astype(np.uint8)], -1)
    cv2.imwrite(str(d / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    rgb16 = (astro[100:100 + H, 100:100 + W].astype(np.uint16) * 257
             + np.arange(W, dtype=np.uint16)[None, :, None])
    cv2.imwrite(str(d / "rgb16.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    upright = astro[250:250 + H, 50:50 + W]
    stored = np.rot90(upright, 1)  # orientation 6 = rotate the stored image 90 deg clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(stored)).save(buf, format="JPEG", quality=95,
                                                       exif=exif.tobytes())
    (d / "sideways.jpg").write_bytes(buf.getvalue())
    return d, {"gray": gray, "rgba": rgba, "rgb16": rgb16, "upright": upright}


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


def test_identity_round_trip_keeps_mode_depth_alpha(photo_dir, tmp_path):
    d, ref = photo_dir
    out = tmp_path / "out"
    errors = []
    inputs = deblur.list_inputs(str(d))
    failed = deblur.deblur_files(_identity, inputs, str(out), batch=2, depth=True,
                                 progress=False, err=errors.append)
    assert failed == [str(d / "broken.png")]
    assert len(errors) == 1 and "broken.png" in errors[0]
    gray = _read(out / "gray.png")
    assert gray.dtype == np.uint8 and gray.shape == (H, W)
    np.testing.assert_array_equal(gray, ref["gray"])
    rgba = _read(out / "rgba.png")
    assert rgba.dtype == np.uint8 and rgba.shape == (H, W, 4)
    np.testing.assert_array_equal(rgba, ref["rgba"])
    rgb16 = _read(out / "rgb16.png")
    assert rgb16.dtype == np.uint16 and rgb16.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb16, ref["rgb16"])
    side = _read(out / "sideways.png")
    assert side.shape == (H, W, 3)
    want = np.asarray(ImageOps.exif_transpose(Image.open(d / "sideways.jpg")))
    assert np.abs(side.astype(int) - want.astype(int)).max() <= 2
    assert np.abs(side.astype(int) - ref["upright"].astype(int)).mean() < 4
    assert not (out / "broken.png").exists()
    disp = np.load(out / "gray_depth.npy")
    assert disp.shape == (H, W) and _read(out / "gray_depth.png").shape == (H, W, 3)
    np.testing.assert_allclose(disp, ref["gray"] / 255.0, atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil(orientation):
    img = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3) * 3
    pil = Image.fromarray(img)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, format="PNG", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    np.testing.assert_array_equal(photos.apply_orientation(img, orientation), want)


def _one_error_line(capsys, *needles) -> str:
    """The CLI's stderr: exactly one line, holding every needle."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def test_never_overwrites_inputs(photo_dir, capsys):
    d, _ = photo_dir
    before = {p: p.read_bytes() for p in d.iterdir()}
    code = deblur.main(["--random-init", "tiny", "--input", str(d), "--output", str(d),
                        "--no-progress"])
    assert code == 2
    _one_error_line(capsys, "would overwrite an input", "--output")
    assert {p: p.read_bytes() for p in d.iterdir()} == before


def test_bad_arguments(tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        deblur.main(["--random-init", "tiny", "--input", str(tmp_path), "--output", str(out),
                     "--tile", "32", "--overlap", "32"])
    assert e.value.code == 2
    _one_error_line(capsys, "--overlap")
    for bad, needle in ((["--tile", "big"], "expected auto or a number of px"),
                        (["--tile", "0", "--max-memory", "4"], "--max-memory"),
                        (["--max-memory", "0"], "--max-memory")):
        with pytest.raises(SystemExit) as e:
            deblur.main(["--random-init", "tiny", "--input", str(tmp_path), "--output",
                         str(out), *bad])
        assert e.value.code == 2
        _one_error_line(capsys, needle)
    assert deblur.main(["--random-init", "tiny", "--input", str(tmp_path / "missing.png"),
                        "--output", str(out)]) == 2
    _one_error_line(capsys, "missing.png: no such file")
    assert os.listdir(tmp_path) == []


def test_output_naming_a_file_is_one_line(photo_dir, tmp_path, capsys):
    d, _ = photo_dir
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    for out in (taken, taken / "sub"):
        assert deblur.main(["--random-init", "tiny", "--input", str(d / "gray.png"),
                            "--output", str(out), "--no-progress"]) == 2
        _one_error_line(capsys, "--output", taken)
    assert taken.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["in", "taken.txt"]


@pytest.mark.slow
def test_cli_random_tiny_on_mixed_folder(photo_dir, tmp_path, capsys):
    d, ref = photo_dir
    out = tmp_path / "out"
    code = deblur.main(["--random-init", "tiny", "--input", str(d), "--output", str(out),
                        "--batch", "2", "--depth", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "4 of 5 images restored" in err
    gray, rgba, rgb16 = (_read(out / f"{n}.png") for n in ("gray", "rgba", "rgb16"))
    assert gray.shape == (H, W) and gray.dtype == np.uint8
    assert rgba.shape == (H, W, 4) and rgba.dtype == np.uint8
    np.testing.assert_array_equal(rgba[..., 3], ref["rgba"][..., 3])
    assert rgb16.shape == (H, W, 3) and rgb16.dtype == np.uint16
    assert _read(out / "sideways.png").shape == (H, W, 3)
    assert sorted(os.listdir(out)) == sorted(
        f"{n}{s}" for n in ("gray", "rgba", "rgb16", "sideways")
        for s in (".png", "_depth.png", "_depth.npy"))


def test_adaptive_flag_reaches_the_restorer(photo_dir, tmp_path, monkeypatch, capsys):
    from radblur_jax.eval import inference, loading
    seen = []

    class FakeRestorer:
        def __init__(self, model, params, options, **kwargs):
            seen.append((options, kwargs))

        def restore(self, x):
            return x, x.mean(-1), np.full((x.shape[0], 1), 3, np.int32)

    monkeypatch.setattr(inference, "Restorer", FakeRestorer)
    monkeypatch.setattr(loading, "load_random", lambda *a, **k: loading.LoadedModel(None, {}, ""))
    d, ref = photo_dir
    code = deblur.main(["--random-init", "tiny", "--input", str(d / "gray.png"), "--output",
                        str(tmp_path / "out"), "--adaptive", "--tile", "16", "--overlap", "4"])
    assert code == 0 and "1 of 1 images restored" in capsys.readouterr().err
    options, kwargs = seen[-1]
    assert options == inference.InferenceOptions(tile=16, overlap=4, adaptive=True)
    assert "memory_limit" not in kwargs and "windows_above" not in kwargs  # a fixed --tile
    np.testing.assert_array_equal(_read(tmp_path / "out" / "gray.png"), ref["gray"])
    # --tile auto (the default): whole images within half the available memory, else 512 px
    deblur.main(["--random-init", "tiny", "--input", str(d / "gray.png"), "--output",
                 str(tmp_path / "out2")])
    options, kwargs = seen[-1]
    assert options == inference.InferenceOptions()
    assert kwargs["fallback_tile"] == 512
    assert 0 < kwargs["memory_limit"] <= inference.available_memory()
    assert kwargs["windows_above"] == deblur.AUTO_WINDOWS_ABOVE == 2_000_000  # on a CPU
    deblur.main(["--random-init", "tiny", "--input", str(d / "gray.png"), "--output",
                 str(tmp_path / "out3"), "--max-memory", "1.5"])
    assert seen[-1][1]["memory_limit"] == 3 * 2**29


def test_steps_text():
    assert deblur.steps_text(np.array([1])) == "1 sub-decoder"
    assert deblur.steps_text(np.array([4, 4])) == "4 sub-decoders in each of 2 tiles"
    assert deblur.steps_text(np.array([2, 4, 3, 3])) == \
        "2-4 sub-decoders per tile (mean 3.0 over 4)"
