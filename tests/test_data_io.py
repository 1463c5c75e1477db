"""Image/depth reading: colour order, bit depth, grayscale, RGBA, corrupt files, depth formats."""

import cv2
import numpy as np
import pytest

from radblur_jax.data import io
from test_data_fakes import photo, write_rgb


def test_rgb_8bit_values_and_order(tmp_path):
    img = photo(0)
    p = write_rgb(str(tmp_path / "a.png"), img)
    out = io.read_image(p)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, img.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(io.read_image(p, raw=True), img)


def test_16bit_scales_by_65535(tmp_path):
    img = (photo(1).astype(np.uint16) * 257 + 3)
    p = str(tmp_path / "a16.png")
    cv2.imwrite(p, img[..., ::-1].copy())
    out = io.read_image(p)
    np.testing.assert_allclose(out, img.astype(np.float32) / 65535.0, rtol=0, atol=1e-7)
    assert io.read_image(p, raw=True).dtype == np.uint16


def test_grayscale_rejected_unless_allowed(tmp_path):
    p = str(tmp_path / "g.png")
    cv2.imwrite(p, photo(0)[..., 0].copy())
    with pytest.raises(io.DataError, match="g.png: grayscale"):
        io.read_image(p)
    out = io.read_image(p, allow_gray=True)
    assert out.shape[2] == 3 and np.array_equal(out[..., 0], out[..., 2])


def test_rgba_opaque_dropped_transparent_rejected(tmp_path):
    rgb = photo(2)
    bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    p = str(tmp_path / "opaque.png")
    cv2.imwrite(p, bgra)
    np.testing.assert_array_equal(io.read_image(p, raw=True), rgb)
    bgra[0, 0, 3] = 10
    q = str(tmp_path / "transp.png")
    cv2.imwrite(q, bgra)
    with pytest.raises(io.DataError, match="transp.png: RGBA image with transparent"):
        io.read_image(q)


def test_corrupt_and_missing_files_named(tmp_path):
    p = write_rgb(str(tmp_path / "c.png"), photo(0))
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 3])
    with pytest.raises(io.DataError, match="c.png: cannot decode"):
        io.read_image(p)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(io.DataError, match="empty.png"):
        io.read_image(str(tmp_path / "empty.png"))
    with pytest.raises(io.DataError, match="nope.png: file not found"):
        io.read_image(str(tmp_path / "nope.png"))


def test_depth_formats(tmp_path):
    d = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5
    np.save(tmp_path / "d.npy", d)
    io.write_pfm(str(tmp_path / "d.pfm"), d)
    cv2.imwrite(str(tmp_path / "d.png"), (d * 100).astype(np.uint16))
    np.testing.assert_array_equal(io.read_depth(str(tmp_path / "d.npy")), d)
    np.testing.assert_array_equal(io.read_depth(str(tmp_path / "d.pfm")), d)
    np.testing.assert_array_equal(io.read_depth(str(tmp_path / "d.png")), d * 100)
    cv2.imwrite(str(tmp_path / "d8.png"), d.astype(np.uint8))
    with pytest.raises(io.DataError, match="d8.png: depth PNG must be 16-bit"):
        io.read_depth(str(tmp_path / "d8.png"))


def test_size_mismatch_names_both():
    with pytest.raises(io.DataError, match=r"size mismatch.*a.png 2x3, b.png 2x4"):
        io.check_same_size([np.zeros((2, 3, 3)), np.zeros((2, 4, 3))], ["a.png", "b.png"])
