"""Image and depth reading with validation (every error names the file); atomic PNG writing.

Policy (tested in tests/test_data_image_io.py):
- Decoding is cv2 `IMREAD_UNCHANGED`, BGR(A) -> RGB(A).
- 8-bit images scale by 255, 16-bit by 65535: `(H, W, 3) float32 in [0, 1]`.
- Grayscale is an error unless the caller passes `allow_gray=True` (then it is repeated to
  3 channels); only `paired_folder` exposes that option.
- RGBA: the alpha channel is dropped when fully opaque; any transparent pixel is an error (a
  composited image would not match its counterpart), unless `drop_alpha=True` (user photos).
- Depth maps: `.npy` (float, any unit), 16-bit PNG (raw integer values, no scaling), `.pfm`
  (grayscale float32, decoded by OpenCV; top row first).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import cv2
import numpy as np

from radblur_jax.atomic_io import write_bytes_atomic

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEPTH_EXTS = (".npy", ".png", ".pfm")


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""


# numpy parses a .npy header with `ast.literal_eval`, and CPython 3.11's AST constructor keeps
# its recursion counter per interpreter, not per thread: two threads parsing at once (the data
# pipeline reads in threads) can fail with "SystemError: AST constructor recursion depth
# mismatch" (python/cpython#106905). `.npy` files are therefore loaded one at a time; a load is
# a header parse and one read, cheap next to decoding the image it comes with.
_NPY_LOCK = threading.Lock()


def is_image(name: str) -> bool:
    """True when `name` ends in one of `IMAGE_EXTS` (any case)."""
    return name.lower().endswith(IMAGE_EXTS)


def list_images(path: str | os.PathLike) -> list[str]:
    """`[path]` for an image file, or the images (by suffix) directly inside a directory, sorted
    by name (possibly none). Raises DataError when `path` does not exist."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path)
                      if is_image(f) and os.path.isfile(os.path.join(path, f)))
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or directory")
    return [path]


def decode(path: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """The image file at `path` decoded by OpenCV with `flags` (as stored: BGR[A], its bit
    depth); DataError naming the file when it is missing or cannot be decoded."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        raise DataError(f"{path}: cannot decode (corrupt or not an image, {buf.size} bytes)")
    return img


def to_unit(img: np.ndarray, path: str = "<array>") -> np.ndarray:
    """uint8 / 255, uint16 / 65535, float as float32; other types are an error naming `path`."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype in (np.float32, np.float64):
        return img.astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected uint8 or uint16)")


def read_image(path: str, *, allow_gray: bool = False, drop_alpha: bool = False,
               raw: bool = False) -> np.ndarray:
    """Reads an image as `(H, W, 3) float32 in [0, 1]`, RGB order.

    `raw=True` keeps the stored integer type (uint8/uint16; `to_unit` converts later, e.g. after
    cropping, which is cheaper). Raises DataError naming `path` for a missing, corrupt,
    grayscale (unless `allow_gray`) or non-opaque RGBA (unless `drop_alpha`) file.
    """
    path = os.fspath(path)
    img = decode(path)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        if not allow_gray:
            raise DataError(f"{path}: grayscale image, expected RGB "
                            "(pass allow_gray=True where grayscale inputs are accepted)")
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        alpha = img[:, :, 3]
        opaque = np.iinfo(img.dtype).max if img.dtype.kind == "u" else 1.0
        if not drop_alpha and not np.all(alpha == opaque):
            raise DataError(f"{path}: RGBA image with transparent pixels; expected RGB "
                            "(an opaque alpha channel would be dropped)")
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise DataError(f"{path}: {img.shape[2]} channels, expected 3")
    if raw and img.dtype in (np.uint8, np.uint16):
        return img
    return to_unit(img, path)


def read_mask(path: str) -> np.ndarray:
    """Reads a mask image as `(H, W) float32 in [0, 1]` (first channel of a colour mask)."""
    img = decode(path)
    if img.ndim == 3:
        img = img[:, :, 0]
    return to_unit(img, path)


def read_depth(path: str) -> np.ndarray:
    """Reads a depth map as `(H, W) float32` in the file's own unit.

    `.npy`: as stored; 16-bit PNG: raw integers (e.g. millimetres), no scaling; `.pfm`: as stored.
    """
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if ext == ".npy":
        try:
            with _NPY_LOCK:
                d = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: cannot load depth .npy ({e})") from e
    elif ext == ".pfm":
        d = decode(path)
        if d.ndim != 2:
            raise DataError(f"{path}: colour PFM, expected a grayscale (Pf) depth map")
    elif ext == ".png":
        d = decode(path)
        if d.dtype != np.uint16:
            raise DataError(f"{path}: depth PNG must be 16-bit, got {d.dtype}")
    else:
        raise DataError(f"{path}: unsupported depth format (expected one of {DEPTH_EXTS})")
    d = np.squeeze(np.asarray(d))
    if d.ndim != 2:
        raise DataError(f"{path}: depth map has shape {d.shape}, expected (H, W)")
    return d.astype(np.float32)


def check_same_size(arrays: Sequence[np.ndarray], paths: Sequence[str]) -> None:
    """Raises DataError naming every file when the arrays' (H, W) differ."""
    sizes = [a.shape[:2] for a in arrays]
    if len(set(sizes)) > 1:
        detail = ", ".join(f"{p} {s[0]}x{s[1]}" for p, s in zip(paths, sizes))
        raise DataError(f"size mismatch inside a pair: {detail}")


def colorize_disparity(disparity: np.ndarray) -> np.ndarray:
    """`(H, W)` disparity -> `(H, W, 3)` uint8 RGB: OpenCV's inferno over the per-image min-max
    range (near = bright; NaN as 0; a constant map is dark)."""
    d = np.nan_to_num(np.asarray(disparity, np.float64))
    lo, hi = float(d.min()), float(d.max())
    t = (d - lo) / (hi - lo) if hi - lo > 1e-12 * max(1.0, abs(hi)) else np.zeros_like(d)
    gray = np.clip(np.round(t * 255), 0, 255).astype(np.uint8)
    return cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO)[..., ::-1].copy()


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of `(H, W)` gray, `(H, W, 3)` RGB or `(H, W, 4)` RGBA uint8/uint16."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"PNG encoding failed for an array of shape {img.shape}")
    return buf.tobytes()


def save_png(path: str, img: np.ndarray) -> None:
    """Writes `(H, W)` gray, `(H, W, 3)` RGB or `(H, W, 4)` RGBA uint8/uint16 as PNG, atomically
    (temporary name, then rename); creates the parent directory."""
    try:
        data = encode_png(img)
    except OSError as e:
        raise OSError(f"{path}: {e}") from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, data)
