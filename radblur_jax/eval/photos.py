"""People's photos in and out, for the deblur CLI and the demo page: decoding (upright, 8 or
16 bits, grey/RGB/RGBA) and encoding in the input's mode."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

_ORIENTATION_TAG = 0x0112


class PhotoError(ValueError):
    """An input photo could not be read; the message names the file."""


@dataclasses.dataclass
class Photo:
    """rgb `(H, W, 3)` float32 in [0, 1] (upright); bits 8 or 16; gray: the input had one
    channel; alpha `(H, W)` uint8/uint16 or None."""
    rgb: np.ndarray
    bits: int
    gray: bool
    alpha: np.ndarray | None


def exif_orientation(path: str) -> int:
    """EXIF orientation 1..8 of an image file (1 when absent or unreadable)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - no EXIF is the common case; decoding errors come later
        return 1
    return value if 1 <= value <= 8 else 1


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


def upright_size(path: str) -> tuple[int, int]:
    """`(H, W)` of the upright image from the file header (PIL; no full decode)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PhotoError(f"{path}: cannot read image header ({e})") from None
    return (w, h) if exif_orientation(path) in (5, 6, 7, 8) else (h, w)


def read_photo(path: str) -> Photo:
    """Decodes `path` (8/16-bit, gray, RGB or RGBA) into an upright `Photo`."""
    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise PhotoError(f"{path}: cannot decode (corrupt or not an image, {buf.size} bytes)")
    if img.dtype not in (np.uint8, np.uint16):
        raise PhotoError(f"{path}: {img.dtype} pixels; expected an 8- or 16-bit image")
    bits = 8 if img.dtype == np.uint8 else 16
    img = apply_orientation(img, exif_orientation(path))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    alpha = None
    if img.ndim == 2:
        gray, rgb = True, np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 3:
        gray, rgb = False, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 4:
        gray, rgb, alpha = False, cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB), img[:, :, 3]
    else:
        raise PhotoError(f"{path}: {img.shape[2]} channels; expected 1, 3 or 4")
    scale = 255.0 if bits == 8 else 65535.0
    return Photo(rgb.astype(np.float32) / scale, bits, gray, alpha)


def encode_photo(restored: np.ndarray, photo: Photo) -> np.ndarray:
    """Restored `(H, W, 3)` float -> the array to save, in the input's mode and bit depth
    (RGB order; `(H, W)` for grayscale, `(H, W, 4)` with the original alpha)."""
    x = np.clip(np.asarray(restored, np.float64), 0.0, 1.0)
    if photo.gray:
        x = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64)
    top, dtype = (255.0, np.uint8) if photo.bits == 8 else (65535.0, np.uint16)
    out = np.round(x * top).astype(dtype)
    if photo.alpha is not None:
        out = np.concatenate([out, photo.alpha[:, :, None].astype(dtype)], axis=2)
    return out


def read_checked(path: str, size: tuple[int, int] | None = None) -> Photo:
    """`read_photo`, with the decoded size checked against the header's upright `(H, W)`
    (`size`, read here when None); raises PhotoError."""
    size = upright_size(path) if size is None else size
    photo = read_photo(path)
    if photo.rgb.shape[:2] != size:
        raise PhotoError(f"{path}: decoded size {photo.rgb.shape[:2]} differs from its header "
                         f"{size}")
    return photo
