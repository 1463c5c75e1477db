"""Image/depth reading: colour order, bit depth, grayscale, RGBA, corrupt files, depth formats."""

import cv2
import numpy as np
import pytest
from test_data_fakes import photo, write_rgb

from radblur_jax.data import image_io


def test_rgb_8bit_values_and_order(tmp_path):
    img = photo(0)
    p = write_rgb(str(tmp_path / "a.png"), img)
    out = image_io.read_image(p)
    assert out.dtype == np.float32 and out.shape == img.shape
    np.testing.assert_array_equal(out, img.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(image_io.read_image(p, raw=True), img)


def test_16bit_scales_by_65535(tmp_path):
    img = (photo(1).astype(np.uint16) * 257 + 3)
    p = str(tmp_path / "a16.png")
    cv2.imwrite(p, img[..., ::-1].copy())
    out = image_io.read_image(p)
    np.testing.assert_allclose(out, img.astype(np.float32) / 65535.0, rtol=0, atol=1e-7)
    assert image_io.read_image(p, raw=True).dtype == np.uint16


def test_grayscale_rejected_unless_allowed(tmp_path):
    p = str(tmp_path / "g.png")
    cv2.imwrite(p, photo(0)[..., 0].copy())
    with pytest.raises(image_io.DataError, match="g.png: grayscale"):
        image_io.read_image(p)
    out = image_io.read_image(p, allow_gray=True)
    assert out.shape[2] == 3 and np.array_equal(out[..., 0], out[..., 2])


def test_rgba_opaque_dropped_transparent_rejected(tmp_path):
    rgb = photo(2)
    bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    p = str(tmp_path / "opaque.png")
    cv2.imwrite(p, bgra)
    np.testing.assert_array_equal(image_io.read_image(p, raw=True), rgb)
    bgra[0, 0, 3] = 10
    q = str(tmp_path / "transp.png")
    cv2.imwrite(q, bgra)
    with pytest.raises(image_io.DataError, match="transp.png: RGBA image with transparent"):
        image_io.read_image(q)


def test_corrupt_and_missing_files_named(tmp_path):
    p = write_rgb(str(tmp_path / "c.png"), photo(0))
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 3])
    with pytest.raises(image_io.DataError, match="c.png: cannot decode"):
        image_io.read_image(p)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(image_io.DataError, match="empty.png"):
        image_io.read_image(str(tmp_path / "empty.png"))
    with pytest.raises(image_io.DataError, match="nope.png: file not found"):
        image_io.read_image(str(tmp_path / "nope.png"))


def _pfm_by_hand(path, arr: np.ndarray, little_endian: bool) -> None:
    """A grayscale PFM written from the format's definition: rows bottom to top, the scale's sign
    gives the byte order."""
    h, w = arr.shape
    scale = b"-1.0" if little_endian else b"1.0"
    rows = np.flipud(arr).astype("<f4" if little_endian else ">f4")
    with open(path, "wb") as f:
        f.write(b"Pf\n%d %d\n" % (w, h) + scale + b"\n" + rows.tobytes())


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_orientation_and_float32_round_trip(tmp_path, little_endian):
    d = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32) * 1e3
    _pfm_by_hand(tmp_path / "spec.pfm", d, little_endian)
    top_row_first = image_io.read_depth(str(tmp_path / "spec.pfm"))
    np.testing.assert_array_equal(top_row_first, d)
    assert cv2.imwrite(str(tmp_path / "cv.pfm"), d)
    back = image_io.read_depth(str(tmp_path / "cv.pfm"))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, d)  # bit-exact
    raw = (tmp_path / "cv.pfm").read_bytes()
    assert raw.startswith(b"Pf\n7 5\n")
    np.testing.assert_array_equal(np.frombuffer(raw[-d.nbytes:], "<f4").reshape(5, 7), d[::-1])


def test_colour_pfm_is_not_a_depth_map(tmp_path):
    cv2.imwrite(str(tmp_path / "c.pfm"), np.zeros((4, 6, 3), np.float32))
    with pytest.raises(image_io.DataError, match="c.pfm: colour PFM"):
        image_io.read_depth(str(tmp_path / "c.pfm"))


def test_list_images_file_or_folder(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert image_io.list_images(tmp_path) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.PNG")]
    assert image_io.list_images(tmp_path / "notes.txt") == [str(tmp_path / "notes.txt")]
    (tmp_path / "empty").mkdir()
    assert image_io.list_images(tmp_path / "empty") == []
    with pytest.raises(image_io.DataError, match="nope: no such file or directory"):
        image_io.list_images(tmp_path / "nope")


def test_depth_formats(tmp_path):
    d = np.arange(12, dtype=np.float32).reshape(3, 4) * 1.5
    np.save(tmp_path / "d.npy", d)
    cv2.imwrite(str(tmp_path / "d.pfm"), d)
    cv2.imwrite(str(tmp_path / "d.png"), (d * 100).astype(np.uint16))
    np.testing.assert_array_equal(image_io.read_depth(str(tmp_path / "d.npy")), d)
    np.testing.assert_array_equal(image_io.read_depth(str(tmp_path / "d.pfm")), d)
    np.testing.assert_array_equal(image_io.read_depth(str(tmp_path / "d.png")), d * 100)
    cv2.imwrite(str(tmp_path / "d8.png"), d.astype(np.uint8))
    with pytest.raises(image_io.DataError, match="d8.png: depth PNG must be 16-bit"):
        image_io.read_depth(str(tmp_path / "d8.png"))


def test_bad_npy_depth_names_the_file(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((5, 7), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "c.npy").read_bytes()[:-8])
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_bytes(b"not an array")
    for name in ("cut.npy", "obj.npy", "text.npy"):
        with pytest.raises(image_io.DataError, match=f"{name}: cannot load depth .npy"):
            image_io.read_depth(str(tmp_path / name))


def test_npy_depth_loads_one_thread_at_a_time(tmp_path, monkeypatch):
    """numpy parses .npy headers with `ast.literal_eval`, which CPython 3.11 cannot run in two
    threads at once; the pipeline's read threads must take turns."""
    import threading
    import time
    load = np.load
    active, most = [0], [0]

    def slow_load(*args, **kwargs):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.01)  # a wide window: without the lock the threads overlap in it
        active[0] -= 1
        return load(*args, **kwargs)

    monkeypatch.setattr(np, "load", slow_load)
    maps = [np.full((3, 4), i, np.float32) for i in range(4)]
    for i, m in enumerate(maps):
        np.save(tmp_path / f"{i}.npy", m)
    results, errors = {}, []

    def read(i):
        try:
            for _ in range(5):
                results[i] = image_io.read_depth(str(tmp_path / f"{i}.npy"))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert most[0] == 1
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(results[i], m)


def test_size_mismatch_names_both():
    with pytest.raises(image_io.DataError, match=r"size mismatch.*a.png 2x3, b.png 2x4"):
        image_io.check_same_size([np.zeros((2, 3, 3)), np.zeros((2, 4, 3))], ["a.png", "b.png"])
