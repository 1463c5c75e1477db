"""The deblur CLI's file formats: TIFF orientation, grey+alpha, float TIFFs, huge headers.

Files are written here byte by byte (a baseline TIFF and PNG writer independent of the code
under test) and run through `deblur_files` with an identity restorer, so outputs must equal
the upright inputs exactly.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from radblur_jax import deblur
from radblur_jax.eval import photos

H, W = 6, 10  # stored size; orientations 5-8 make it W x H upright


def _identity(x):
    return x, x.mean(-1)


def tiff_bytes(arr: np.ndarray, orientation: int = 1, size: tuple[int, int] | None = None) -> bytes:
    """Little-endian baseline TIFF, one uncompressed strip, `arr (H, W[, C])` uint8, uint16 or
    float32 (2 or 4 channels: the last is unassociated alpha). `size` (H, W) overrides the
    header's size (a header that claims more than the file holds)."""
    arr = np.ascontiguousarray(arr)
    h, w = size or arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    bits = arr.dtype.itemsize * 8
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [bits] * c), 259: (3, [1]),
            262: (3, [2 if c >= 3 else 1]), 273: (4, [0]), 274: (3, [orientation]),
            277: (3, [c]), 278: (4, [h]), 279: (4, [len(data)]), 284: (3, [1]),
            339: (3, [3 if arr.dtype.kind == "f" else 1] * c)}
    if c in (2, 4):
        tags[338] = (3, [2])
    n = len(tags)
    extra_at = 8 + 2 + 12 * n + 4
    extra = b""
    data_at = extra_at + sum(2 * len(v) for t, v in tags.values() if t == 3 and len(v) > 2)
    entries = b""
    for tag in sorted(tags):
        typ, vals = tags[tag]
        if tag == 273:
            vals = [data_at]
        packed = b"".join(struct.pack("<H" if typ == 3 else "<I", v) for v in vals)
        if len(packed) > 4:
            entries += struct.pack("<HHII", tag, typ, len(vals), extra_at + len(extra))
            extra += packed
        else:
            entries += struct.pack("<HHI", tag, typ, len(vals)) + packed.ljust(4, b"\0")
    return b"II*\0" + struct.pack("<IH", 8, n) + entries + b"\0\0\0\0" + extra + data


def png_bytes(arr: np.ndarray, color_type: int, size: tuple[int, int] | None = None) -> bytes:
    """PNG of `arr (H, W, C)` uint8/uint16 with the given IHDR colour type (filter 0)."""
    h, w = size or arr.shape[:2]
    raw = arr.astype(">u2" if arr.dtype == np.uint16 else np.uint8).view(np.uint8)
    rows = np.concatenate([np.zeros((arr.shape[0], 1), np.uint8),
                           raw.reshape(arr.shape[0], -1)], 1)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, arr.dtype.itemsize * 8, color_type, 0, 0, 0)
    idat = zlib.compress(rows.tobytes())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _run(tmp_path, files: dict[str, bytes]):
    """Writes `files` into in/, runs deblur_files; returns (out dir, failed names, errors)."""
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    errors: list[str] = []
    failed = deblur.deblur_files(_identity, deblur.list_inputs(str(d)), str(tmp_path / "out"),
                                 batch=2, progress=False, err=errors.append)
    return tmp_path / "out", sorted(p.split("/")[-1] for p in failed), errors


def _read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiff_orientation_applied_once(tmp_path, orientation):
    """8/16-bit RGB and grey TIFFs come out upright: equal to the stored pixels turned by
    numpy, and to Pillow's exif_transpose of the file (read from memory; for 16-bit RGB Pillow
    gives the high byte)."""
    rng = np.random.default_rng(orientation)
    rgb8 = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    gray8 = rng.integers(0, 256, (H, W)).astype(np.uint8)  # Pillow memory-maps these
    rgb16 = rng.integers(0, 65536, (H, W, 3)).astype(np.uint16)
    gray16 = rng.integers(0, 65536, (H, W)).astype(np.uint16)
    files = {f"{k}.tif": tiff_bytes(a, orientation)
             for k, a in (("rgb8", rgb8), ("gray8", gray8), ("rgb16", rgb16),
                          ("gray16", gray16))}
    out, failed, errors = _run(tmp_path, files)
    assert failed == [] and errors == []
    for name, data in files.items():
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        got = _read(out / name.replace(".tif", ".png"))
        assert got.shape[:2] == (W, H) if orientation > 4 else (H, W)
        stored = {"rgb8.tif": rgb8, "gray8.tif": gray8, "rgb16.tif": rgb16,
                  "gray16.tif": gray16}[name]
        np.testing.assert_array_equal(got, photos.apply_orientation(stored, orientation))
        if name == "rgb16.tif":
            np.testing.assert_array_equal((got >> 8).astype(np.uint8), want)
        else:
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert photos.upright_size(str(tmp_path / "in" / "rgb8.tif")) == got.shape[:2]


def test_grey_alpha_stays_grey_alpha(tmp_path):
    rng = np.random.default_rng(1)
    la8 = rng.integers(0, 256, (H, W, 2)).astype(np.uint8)
    la16 = rng.integers(0, 65536, (H, W, 2)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(la8, "LA").save(buf, format="TIFF", tiffinfo={0x0112: 6})
    files = {"la8.png": png_bytes(la8, 4), "la16.png": png_bytes(la16, 4),
             "la8_tiff.tif": buf.getvalue(), "la16_tiff.tif": tiff_bytes(la16)}
    out, failed, errors = _run(tmp_path, files)
    assert failed == ["la16_tiff.tif"]
    assert len(errors) == 1 and "la16_tiff.tif: 16-bit grey+alpha TIFF" in errors[0]
    for name, want in (("la8", la8), ("la16", la16),
                       ("la8_tiff", photos.apply_orientation(la8, 6))):
        data = (out / f"{name}.png").read_bytes()
        assert data[24:26] == bytes([want.dtype.itemsize * 8, 4])  # IHDR: depth, grey+alpha
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # as BGRA
        np.testing.assert_array_equal(back[..., [0, 3]], want)
        if want.dtype == np.uint8:
            pil = Image.open(io.BytesIO(data))
            assert pil.mode == "LA"
            np.testing.assert_array_equal(np.asarray(pil), want)


def test_float_tiff_gets_the_float_message(tmp_path):
    rgb = np.random.default_rng(2).random((H, W, 3)).astype(np.float32)
    good = cv2.imencode(".png", np.full((H, W, 3), 90, np.uint8))[1].tobytes()
    out, failed, errors = _run(tmp_path, {"floats.tif": tiff_bytes(rgb), "good.png": good})
    assert failed == ["floats.tif"] and (out / "good.png").exists()
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert "floats.tif: float32 pixels; expected an 8- or 16-bit image" in errors[0]
    assert "cannot identify" not in errors[0]


def _bmp_header(w: int, h: int) -> bytes:
    """A 24-bit BMP header claiming w x h pixels (and a few bytes of pixels)."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def test_huge_headers_are_named_and_skipped_the_others_restored(tmp_path):
    """Headers claiming 20000 x 20000 px (PNG, TIFF: checked here; BMP: Pillow's
    DecompressionBombError) are refused one by one; the run goes on with the other files."""
    small = np.zeros((4, 4, 3), np.uint8)
    good = np.random.default_rng(3).integers(0, 256, (H, W, 3)).astype(np.uint8)
    files = {"bomb_png.png": png_bytes(small, 2, size=(20000, 20000)),
             "bomb_tif.tif": tiff_bytes(small, size=(20000, 20000)),
             "bomb_bmp.bmp": _bmp_header(20000, 20000),
             "good.png": png_bytes(good, 2)}
    out, failed, errors = _run(tmp_path, files)
    assert failed == ["bomb_bmp.bmp", "bomb_png.png", "bomb_tif.tif"]
    np.testing.assert_array_equal(_read(out / "good.png"), good)
    assert len(errors) == 3 and all("179 MP this tool reads (MAX_PIXELS)" in e for e in errors)
    for name in ("bomb_png.png", "bomb_tif.tif"):
        assert any(f"{name}: 20000 x 20000 px = 400 MP" in e for e in errors)


def test_large_but_allowed_header_reads_without_pillow_warning(tmp_path):
    """100 MP is within MAX_PIXELS: no DecompressionBombWarning (Pillow warns above 89 MP)."""
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(np.zeros((1, 1, 3), np.uint8), 2, size=(10000, 10000)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert photos.upright_size(str(path)) == (10000, 10000)


def test_gray_alpha_png_round_trips_every_filter_row():
    """The grey+alpha PNG writer ("Up" filter on every row) decodes to its input."""
    rng = np.random.default_rng(4)
    for img in (rng.integers(0, 256, (7, 5, 2)).astype(np.uint8),
                rng.integers(0, 65536, (3, 9, 2)).astype(np.uint16)):
        back = cv2.imdecode(np.frombuffer(photos.gray_alpha_png(img), np.uint8),
                            cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back[..., [0, 3]], img)
        np.testing.assert_array_equal(back[..., 1], img[..., 0])


def test_colour_profile_goes_into_the_output(tmp_path):
    """An embedded ICC profile (JPEG, PNG, WebP, TIFF) reaches the output PNG unchanged when it
    is of the output's colour space: RGB for colour, grey for grey (an RGB profile on a grey
    image is dropped); the PNG with the profile decodes to the same pixels."""
    from PIL import ImageCms

    rgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray_profile = rgb_profile[:16] + b"GRAY" + rgb_profile[20:]  # header: a grey profile
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    gray = rng.integers(0, 256, (H, W)).astype(np.uint8)

    def encoded(arr, fmt, profile):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, icc_profile=profile)
        return buf.getvalue()

    files = {f"rgb_{fmt.lower()}.{ext}": encoded(rgb, fmt, rgb_profile)
             for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"))}
    files.update({"gray_own.png": encoded(gray, "PNG", gray_profile),
                  "gray_rgb_profile.png": encoded(gray, "PNG", rgb_profile),
                  "plain.png": encoded(rgb, "PNG", None)})
    out, failed, errors = _run(tmp_path, files)
    assert failed == [] and errors == []
    want = {name: rgb_profile for name in files if name.startswith("rgb_")}
    want.update({"gray_own.png": gray_profile, "gray_rgb_profile.png": None, "plain.png": None})
    for name, profile in want.items():
        path = out / (name.rsplit(".", 1)[0] + ".png")
        with Image.open(path) as im:
            assert im.info.get("icc_profile") == profile, name
        if name in ("rgb_png.png", "gray_own.png"):
            np.testing.assert_array_equal(_read(path), rgb if name.startswith("rgb") else gray)


def test_png_with_icc_profile_round_trips():
    png = cv2.imencode(".png", np.arange(60, dtype=np.uint8).reshape(6, 10))[1].tobytes()
    profile = bytes(range(256)) * 3
    with_profile = photos.png_with_icc_profile(png, profile)
    with Image.open(io.BytesIO(with_profile)) as im:
        assert im.info["icc_profile"] == profile
        np.testing.assert_array_equal(np.asarray(im), np.arange(60).reshape(6, 10))
    with pytest.raises(ValueError, match="not a PNG"):
        photos.png_with_icc_profile(b"GIF89a" + png[6:], profile)
