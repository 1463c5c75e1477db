"""People's photos in and out, for the deblur CLI and the demo page (`read_checked`, `encode_photo`,
`write_photo`).

Reading: the header first (`read_header`, no pixels decoded: stored size, EXIF orientation,
grey+alpha, TIFF sample layout), then the pixels, turned upright exactly once:

- PNG, JPEG, WebP, BMP: OpenCV with `IMREAD_UNCHANGED` (8/16 bits kept; OpenCV applies no EXIF
  orientation with that flag), then the orientation from Pillow's `getexif` applied here.
- TIFF: the first IFD read here (Pillow's `ImageFileDirectory_v2`, no decoding; Pillow's
  `Image.size` of a TIFF is already transposed for orientations 5-8). Pillow decodes what it
  holds losslessly (1/8-bit grey, grey+alpha, palette, RGB, RGBA, CMYK; 16-bit grey), and
  `ImageOps.exif_transpose` turns it upright. 16-bit RGB/RGBA, which Pillow reduces to 8 bits,
  goes to OpenCV, whose TIFF decoder applies the orientation itself, even with
  `IMREAD_UNCHANGED` (so it is not applied again; tests/test_deblur_formats.py checks both).
  OpenCV is not used for the rest: it drops a grey+alpha TIFF's alpha, premultiplies 8-bit
  RGBA and garbles some tiled files.
- Float, signed or wider-than-16-bit samples: a PhotoError naming the file and the sample type
  ("float32 pixels; expected an 8- or 16-bit image"); so is a 16-bit grey+alpha TIFF, which
  neither library reads without losing the alpha or 8 bits.
- Size: images above `MAX_PIXELS` are refused from the header, before anything is decoded.

Modes kept (`encode_photo`, `write_photo`): grey, grey+alpha, RGB and RGBA, 8 or 16 bits, as PNG.
Colour profile: an embedded ICC profile (JPEG, PNG, WebP, TIFF) goes into the output PNG (an
iCCP chunk) when it describes the output's colour space (RGB; grey for a grey output): the
model changes the pixel values, not the space they are in, so a Display P3 or Adobe RGB photo
must not turn into sRGB on the way out. A profile of another space (a CMYK TIFF's, once its
pixels are converted to RGB) is dropped.
"""
from __future__ import annotations

import dataclasses
import io
import os
import struct
import warnings
import zlib

import cv2
import numpy as np

from radblur_jax.atomic_io import write_bytes_atomic
from radblur_jax.data.image_io import encode_png

# Pillow refuses headers above 2 x Image.MAX_IMAGE_PIXELS (a decompression-bomb guard); the
# same number here makes the limit one for every format. PNG and TIFF sizes are checked from
# their headers (so the message gives the size), the other formats by Pillow's error.
MAX_PIXELS = 178_956_970  # ~179 MP, e.g. 16000 x 11000

_ORIENTATION_TAG = 0x0112
_ICC_PROFILE_TAG = 34675  # TIFF InterColorProfile
_ICC_HEADER_BYTES = 128
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_GRAY_ALPHA = 4  # IHDR colour type


class PhotoError(ValueError):
    """An input photo could not be read; the message names the file."""


@dataclasses.dataclass
class Photo:
    """rgb `(H, W, 3)` float32 in [0, 1] (upright); bits 8 or 16; gray: the input had one
    colour channel; alpha `(H, W)` uint8/uint16 or None (with gray: a grey+alpha input);
    icc_profile: the file's embedded ICC profile or None."""
    rgb: np.ndarray
    bits: int
    gray: bool
    alpha: np.ndarray | None
    icc_profile: bytes | None = None


@dataclasses.dataclass(frozen=True)
class Header:
    """What a file's header says: `size` (H, W) as stored, `orientation` (EXIF 1..8), `tiff`,
    `gray_alpha` (one grey channel + alpha), `icc_profile` (the embedded ICC profile or None),
    and for TIFF `bits` and `sample_format` (1 unsigned, 2 signed, 3 float) per sample and
    `samples` per pixel."""
    size: tuple[int, int]
    orientation: int = 1
    tiff: bool = False
    gray_alpha: bool = False
    bits: int = 8
    sample_format: int = 1
    samples: int = 3
    icc_profile: bytes | None = None

    @property
    def upright_size(self) -> tuple[int, int]:
        """(H, W) once the orientation is applied."""
        h, w = self.size
        return (w, h) if self.orientation in (5, 6, 7, 8) else (h, w)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turns a stored `(H, W[, C])` array upright for EXIF orientation 1..8."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](img))


def _valid_orientation(value) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _icc_profile(value) -> bytes | None:
    """An embedded profile as bytes; None when absent or shorter than an ICC header."""
    if not isinstance(value, (bytes, bytearray)) or len(value) < _ICC_HEADER_BYTES:
        return None
    return bytes(value)


def _check_size(path: str, h: int, w: int) -> None:
    if h * w > MAX_PIXELS:
        raise PhotoError(f"{path}: {w} x {h} px = {h * w / 1e6:.0f} MP, more than the "
                         f"{MAX_PIXELS / 1e6:.0f} MP this tool reads (MAX_PIXELS)")


def _tiff_header(path: str, head: bytes) -> Header:
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as f:
            big = b"+" in head[2:4]  # BigTIFF: a 16-byte file header
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head[:16] if big else head[:8])
            f.seek(ifd.next)
            ifd.load(f)
        w, h = int(ifd[256]), int(ifd[257])
        bits = ifd.get(258, (1,))
        fmt = ifd.get(339, (1,))
        samples = int(ifd.get(277, 1))
        icc = _icc_profile(ifd.get(_ICC_PROFILE_TAG))
    except Exception as e:  # a malformed IFD raises anything from KeyError to struct.error
        raise PhotoError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from None
    _check_size(path, h, w)
    bits, fmt = (v if isinstance(v, tuple) else (v,) for v in (bits, fmt))
    return Header((h, w), _valid_orientation(ifd.get(274, 1)), tiff=True,
                  gray_alpha=samples == 2, bits=int(max(bits)), sample_format=int(fmt[0]),
                  samples=samples, icc_profile=icc)


def read_header(path: str) -> Header:
    """The header of an image file; raises PhotoError naming the file (unreadable, not an
    image, or larger than MAX_PIXELS)."""
    from PIL import Image, TiffImagePlugin, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise PhotoError(f"{path}: cannot read ({e.strerror})") from None
    if head[:4] in TiffImagePlugin.PREFIXES:
        return _tiff_header(path, head)
    gray_alpha = False
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        _check_size(path, h, w)
        gray_alpha = head[25] == _PNG_GRAY_ALPHA
    with warnings.catch_warnings():
        # Pillow warns above half its limit; MAX_PIXELS is the limit here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                w, h = im.size
                icc = _icc_profile(im.info.get("icc_profile"))
                try:
                    orientation = _valid_orientation(im.getexif().get(_ORIENTATION_TAG, 1))
                except Exception:  # a broken EXIF block: the pixels may still be fine
                    orientation = 1
        except Image.DecompressionBombError as e:
            raise PhotoError(f"{path}: more than the {MAX_PIXELS / 1e6:.0f} MP this tool reads "
                             f"(MAX_PIXELS); Pillow: {e}") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise PhotoError(f"{path}: cannot read image header ({e})") from None
    _check_size(path, h, w)
    return Header((h, w), orientation, gray_alpha=gray_alpha, icc_profile=icc)


def upright_size(path: str) -> tuple[int, int]:
    """`(H, W)` of the upright image from the file header (no full decode)."""
    return read_header(path).upright_size


def _decode_cv2(path: str) -> np.ndarray:
    """OpenCV `IMREAD_UNCHANGED`, channels in RGB(A) order."""
    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise PhotoError(f"{path}: cannot decode (corrupt or not an image, {buf.size} bytes)")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


_PIL_AS = {"1": "L", "P": "RGB", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "RGBX": "RGB",
           "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _decode_tiff(path: str, header: Header) -> np.ndarray:
    """An upright TIFF (see the module docstring for who decodes what)."""
    from PIL import Image, ImageOps

    kind = {2: "signed ", 3: "float"}.get(header.sample_format, "")
    if kind or header.bits > 16:
        bits = f"{kind}{header.bits}" if kind == "float" else f"{kind}{header.bits}-bit"
        raise PhotoError(f"{path}: {bits} pixels; expected an 8- or 16-bit image")
    if header.bits == 16 and header.samples >= 3:
        return _decode_cv2(path)  # upright already: OpenCV's TIFF decoder orients it
    if header.bits == 16 and header.gray_alpha:
        raise PhotoError(f"{path}: 16-bit grey+alpha TIFF, which neither OpenCV nor Pillow "
                         "reads without losing the alpha or 8 bits; save it as PNG")
    try:
        with open(path, "rb") as f:
            # From memory, not the path: Pillow memory-maps an uncompressed grey, 16-bit or RGBA
            # file and then reads it with the size already transposed for orientations 5-8
            # (garbled pixels); from a buffer it decodes and orients correctly.
            data = io.BytesIO(f.read())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(data) as im:
                im = ImageOps.exif_transpose(im)
                mode = _PIL_AS.get(im.mode, im.mode)
                if im.mode == "P" and "transparency" in im.info:
                    mode = "RGBA"
                if mode != im.mode:
                    im = im.convert(mode)
                img = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise PhotoError(f"{path}: cannot decode ({e})") from None
    if img.dtype.kind == "u" and img.dtype.itemsize == 2:
        img = img.astype(np.uint16)  # I;16B arrives big-endian
    return img


def read_photo(path: str, header: Header | None = None) -> Photo:
    """Decodes `path` (8/16-bit grey, grey+alpha, RGB or RGBA) into an upright `Photo`."""
    header = read_header(path) if header is None else header
    if header.tiff:
        img = _decode_tiff(path, header)
    else:
        img = apply_orientation(_decode_cv2(path), header.orientation)
    if img.dtype not in (np.uint8, np.uint16):
        raise PhotoError(f"{path}: {img.dtype} pixels; expected an 8- or 16-bit image")
    bits = 8 if img.dtype == np.uint8 else 16
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if header.gray_alpha and img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, [0, 3]]  # OpenCV expands a grey+alpha PNG to RGBA (equal R, G, B)
    alpha = None
    if img.ndim == 2:
        gray, rgb = True, np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 2:
        gray, rgb, alpha = True, np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1]
    elif img.shape[2] == 3:
        gray, rgb = False, img
    elif img.shape[2] == 4:
        gray, rgb, alpha = False, img[:, :, :3], img[:, :, 3]
    else:
        raise PhotoError(f"{path}: {img.shape[2]} channels; expected 1, 2, 3 or 4")
    scale = 255.0 if bits == 8 else 65535.0
    return Photo(np.ascontiguousarray(rgb).astype(np.float32) / scale, bits, gray,
                 None if alpha is None else np.ascontiguousarray(alpha), header.icc_profile)


def read_checked(path: str, size: tuple[int, int] | None = None) -> Photo:
    """`read_photo`, with the decoded size checked against the header's upright `(H, W)`
    (`size`, read here when None); raises PhotoError."""
    header = read_header(path)
    size = header.upright_size if size is None else size
    photo = read_photo(path, header)
    if photo.rgb.shape[:2] != size:
        raise PhotoError(f"{path}: decoded size {photo.rgb.shape[:2]} differs from its header "
                         f"{size}")
    return photo


def encode_photo(restored: np.ndarray, photo: Photo) -> np.ndarray:
    """Restored `(H, W, 3)` float -> the array to save, in the input's mode and bit depth:
    `(H, W)` grey, `(H, W, 2)` grey+alpha, `(H, W, 3)` RGB or `(H, W, 4)` RGBA (RGB order,
    the original alpha)."""
    x = np.clip(np.asarray(restored, np.float64), 0.0, 1.0)
    if photo.gray:
        x = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64)
    top, dtype = (255.0, np.uint8) if photo.bits == 8 else (65535.0, np.uint16)
    out = np.round(x * top).astype(dtype)
    if photo.alpha is not None:
        out = np.concatenate([out.reshape(*out.shape[:2], -1),
                              photo.alpha[:, :, None].astype(dtype)], axis=2)
    return out


def gray_alpha_png(img: np.ndarray) -> bytes:
    """PNG bytes of a grey+alpha `(H, W, 2)` uint8/uint16 image (colour type 4; OpenCV cannot
    write two channels, Pillow not at 16 bits). Every row uses the "Up" filter."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 2 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"gray_alpha_png: expected (H, W, 2) uint8/uint16, got {img.shape} "
                         f"{img.dtype}")
    h, w, _ = img.shape
    depth = img.dtype.itemsize * 8
    raw = img.astype(">u2" if depth == 16 else np.uint8).view(np.uint8).reshape(h, -1)
    up = raw.copy()
    up[1:] = raw[1:] - raw[:-1]  # uint8 arithmetic wraps modulo 256, as the filter needs
    rows = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, _PNG_GRAY_ALPHA, 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _png_chunk(b"IEND", b""))


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def png_with_icc_profile(png: bytes, profile: bytes) -> bytes:
    """`png` with an iCCP chunk holding `profile`, right after its IHDR (where the PNG
    specification wants it: before any image data)."""
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("png_with_icc_profile: not a PNG starting with IHDR")
    end = 8 + 12 + struct.unpack(">I", png[8:12])[0]
    iccp = _png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(profile, 9))
    return png[:end] + iccp + png[end:]


def profile_fits(profile: bytes, img: np.ndarray) -> bool:
    """Whether an ICC profile's colour space (header bytes 16-20) is that of an `encode_photo`
    array: RGB for 3 or 4 channels, grey for 1 or 2."""
    gray = img.ndim == 2 or img.shape[2] == 2
    return profile[16:20] == (b"GRAY" if gray else b"RGB ")


def write_photo(path: str, img: np.ndarray, icc_profile: bytes | None = None) -> None:
    """Writes an `encode_photo` array as PNG, atomically (temporary name, then rename), with
    `icc_profile` embedded when it fits the image's colour space (`profile_fits`)."""
    img = np.asarray(img)
    png = gray_alpha_png(img) if img.ndim == 3 and img.shape[2] == 2 else encode_png(img)
    if icc_profile is not None and profile_fits(icc_profile, img):
        png = png_with_icc_profile(png, icc_profile)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, png)
