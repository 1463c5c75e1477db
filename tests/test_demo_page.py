"""The demo page's work behind the page (demo_page.DemoSession) with a stand-in model whose output
is known: every kind of upload gets a result or a readable message, and the session keeps going.
The page itself, in a browser, is test_demo_browser.py."""
from __future__ import annotations

import os
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import data

from radblur_jax.demo import build_parser
from radblur_jax.demo_page import DemoSession, preview
from radblur_jax.eval.inference import InferenceOptions


class _Adaptive(NamedTuple):
    restored: jax.Array
    disparity: jax.Array
    steps: jax.Array


class _Depth(NamedTuple):
    disparity: jax.Array


class HalfModel:
    """Stand-in for RADBlur.adaptive (and .encode, window mode's depth): restored = x / 2,
    disparity = channel mean, 3 steps."""

    def apply(self, variables, x, num_active=None, method=None):
        if method == "encode":
            return None, _Depth(jnp.mean(x, -1)), None
        assert method == "adaptive"
        return _Adaptive(x * 0.5, jnp.mean(x, -1), jnp.full((x.shape[0],), 3, jnp.int32))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return DemoSession(HalfModel(), {}, description="half", max_megapixels=0.05,
                       options=InferenceOptions(tile=64, overlap=8, adaptive=True),
                       out_dir=str(tmp_path_factory.mktemp("out")))


def _read(path):
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def test_rgb_photo_gives_previews_depth_and_download(session, tmp_path):
    rgb = data.astronaut()[:48, :40]
    path = str(tmp_path / "astro.jpg.png")
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    r = session.restore_upload(path)
    assert r.ok and r.download.endswith("astro.jpg_restored.png")
    assert "40 x 48 px" in r.message and "3 sub-decoders" in r.message
    np.testing.assert_array_equal(r.blurry, rgb)
    out = cv2.cvtColor(_read(r.download), cv2.COLOR_BGR2RGB)
    half = (rgb.astype(np.float32) / np.float32(255.0)) * np.float32(0.5)  # as computed in f32
    np.testing.assert_array_equal(out, np.round(half.astype(np.float64) * 255).astype(np.uint8))
    np.testing.assert_array_equal(r.restored, out)
    assert r.depth.shape == (48, 40, 3) and r.depth.dtype == np.uint8
    assert "compiling" in r.message
    assert "compiling" not in session.restore_upload(path).message  # same size: compiled once


def test_16bit_tiff_and_grayscale_keep_mode_and_depth(session, tmp_path):
    rgb16 = data.astronaut()[:30, :50].astype(np.uint16) * 257 + 3
    tif = str(tmp_path / "scan.tif")
    cv2.imwrite(tif, cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    r = session.restore_upload(tif)
    assert r.ok and "16-bit" in r.message, r.message
    out = _read(r.download)
    assert out.dtype == np.uint16 and out.shape == (30, 50, 3)
    assert r.restored.dtype == np.uint8 and r.restored.shape == (30, 50, 3)
    gray = data.camera()[:30, :50]
    png = str(tmp_path / "gray.png")
    cv2.imwrite(png, gray)
    r = session.restore_upload(png)
    assert r.ok and "Grayscale" in r.message
    assert _read(r.download).shape == (30, 50)


def test_large_photo_goes_through_tiles(session, tmp_path):
    path = str(tmp_path / "wide.png")
    cv2.imwrite(path, data.astronaut()[:60, :150])
    r = session.restore_upload(path)
    assert r.ok and r.steps.shape == (3,) and "3 tiles" in r.message, r.message


def test_auto_tiling_takes_windows_above_its_pixel_count(tmp_path):
    """With the deblur CLI's auto rule (`tiling`), a photo goes whole or through windows as
    that rule says, not by its side."""
    s = DemoSession(HalfModel(), {}, description="half", out_dir=str(tmp_path / "out"),
                    options=InferenceOptions(tile=0, overlap=8, adaptive=True),
                    tiling=dict(memory_limit=2**40, fallback_tile=64, windows_above=8000))
    for size, windows in (((60, 150), 3), ((40, 150), 1)):  # 9,000 px > 8,000 >= 6,000 px
        path = str(tmp_path / f"{size[0]}.png")
        cv2.imwrite(path, data.astronaut()[:size[0], :size[1]])
        r = s.restore_upload(path)
        assert r.ok and r.steps.shape == (windows,), r.message
        assert ("3 overlapping tiles" in r.message) == (windows == 3), r.message


def test_demo_tile_argument():
    parse = build_parser().parse_args
    assert parse(["--random-init", "tiny"]).tile == "auto"
    assert parse(["--random-init", "tiny", "--tile", "256"]).tile == 256


def test_bad_uploads_get_a_message_and_the_session_goes_on(session, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    huge = tmp_path / "huge.png"
    cv2.imwrite(str(huge), np.zeros((300, 200, 3), np.uint8))
    floats = tmp_path / "float.tif"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(floats)
    cases = {text: "cannot read image header", broken: "cannot read image header",
             huge: "200 x 300 px = 0.06 MP; this page takes photos up to 0.05 MP",
             floats: "float32 pixels; expected an 8- or 16-bit image"}
    for path, message in cases.items():
        r = session.restore_upload(str(path))
        assert not r.ok and r.download is None, path
        assert r.message.startswith(f"**Cannot restore `{path.name}`**: "), r.message
        assert message in r.message and str(tmp_path) not in r.message, r.message
    assert session.restore_upload(None).message.startswith("Drop a photo")
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((10, 12, 3), 200, np.uint8))
    assert session.restore_upload(str(good)).ok


def test_unexpected_errors_become_messages(tmp_path, capsys):
    class Broken(HalfModel):
        def apply(self, *args, **kwargs):
            raise RuntimeError("out of memory")
    s = DemoSession(Broken(), {}, description="broken", out_dir=str(tmp_path),
                    options=InferenceOptions(adaptive=True))
    path = str(tmp_path / "p.png")
    cv2.imwrite(path, np.zeros((8, 8, 3), np.uint8))
    r = s.restore_upload(path)
    assert not r.ok and r.message == "**Cannot restore `p.png`**: RuntimeError: out of memory"
    assert "Traceback" in capsys.readouterr().err  # the details go to the server's log


def test_preview_modes():
    rgba16 = np.full((2, 3, 4), 65535, np.uint16)
    assert preview(rgba16).shape == (2, 3, 3) and preview(rgba16).dtype == np.uint8
    assert (preview(rgba16) == 255).all()
    assert preview(np.zeros((2, 3), np.uint8)).shape == (2, 3, 3)
    gray_alpha = np.stack([np.full((2, 3), 7, np.uint8), np.full((2, 3), 255, np.uint8)], -1)
    assert preview(gray_alpha).shape == (2, 3, 3) and (preview(gray_alpha) == 7).all()


def test_only_the_last_downloads_stay_on_disk(tmp_path):
    from radblur_jax.demo_page import KEEP_DOWNLOADS
    s = DemoSession(HalfModel(), {}, description="half", out_dir=str(tmp_path / "out"),
                    options=InferenceOptions(adaptive=True))
    path = str(tmp_path / "p.png")
    cv2.imwrite(path, np.zeros((8, 8, 3), np.uint8))
    files = [s.restore_upload(path).download for _ in range(KEEP_DOWNLOADS + 2)]
    assert [os.path.exists(f) for f in files] == [False] * 2 + [True] * KEEP_DOWNLOADS
