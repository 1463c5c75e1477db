"""Image loading and Depth Anything V2 input preprocessing (host side, numpy/OpenCV).

`preprocess_da_v2` reproduces Depth Anything V2's `image2tensor`: RGB / 255, resize with
`keep_aspect_ratio=True, ensure_multiple_of=<patch size, 14>, resize_method="lower_bound"`
(cv2.INTER_CUBIC, in float64), ImageNet mean/std, float32. Outputs are NHWC-ready `(H', W', 3)`
arrays.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from radblur_jax.data import image_io
from radblur_jax.models.configs import PATCH_SIZE
from radblur_jax.models.depth_anything import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = image_io.IMAGE_EXTS


class ImageError(image_io.DataError):
    """An image could not be read or has a shape the model cannot take; names the file."""


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB of a user photo, decoded as Depth Anything V2's `run.py` reads one
    (`cv2.imread`): EXIF orientation applied, grayscale repeated, alpha dropped, 16-bit
    reduced to its high byte. Raises ImageError naming the file."""
    try:
        # IMREAD_COLOR is imread's decode: the same pixels, orientation included.
        img = image_io.decode(os.fspath(path), cv2.IMREAD_COLOR)
    except image_io.DataError as e:
        raise ImageError(str(e)) from None
    return np.ascontiguousarray(img[:, :, ::-1])


def _multiple(x: float, multiple: int, min_val: int) -> int:
    y = int(np.round(x / multiple) * multiple)
    if y < min_val:
        y = int(np.ceil(x / multiple) * multiple)
    return y


def da_v2_size(height: int, width: int, target: int = 518, multiple: int = PATCH_SIZE
               ) -> tuple[int, int]:
    """Depth Anything V2 input `(H', W')`: short side `target`, long side a multiple of `multiple`.

    `target` must be a positive multiple of `multiple` (ValueError otherwise). The scale
    `max(target/H, target/W)` is applied to both sides, then each side is rounded to
    the nearest multiple (NumPy rounding, half to even), never below `target`.
    """
    if target < 1 or target % multiple:
        raise ValueError(f"target size {target}: expected a positive multiple of {multiple}")
    scale = max(target / height, target / width)
    return (_multiple(scale * height, multiple, target), _multiple(scale * width, multiple, target))


def normalize_imagenet(rgb01: np.ndarray) -> np.ndarray:
    """`(..., 3)` RGB in [0, 1] -> ImageNet-normalised float32."""
    return ((rgb01 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float32)


def preprocess_da_v2(rgb: np.ndarray, target: int = 518, multiple: int = PATCH_SIZE
                     ) -> np.ndarray:
    """uint8 `(H, W, 3)` RGB -> float32 `(H', W', 3)` network input, as Depth Anything V2 does."""
    h, w = rgb.shape[:2]
    new_h, new_w = da_v2_size(h, w, target, multiple)
    x = rgb.astype(np.float64) / 255.0
    x = cv2.resize(x, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    return normalize_imagenet(x)


def preprocess_native(rgb: np.ndarray, multiple: int = PATCH_SIZE, source: str = "<image>"
                      ) -> np.ndarray:
    """uint8 `(H, W, 3)` RGB -> float32 network input at its own size (sides multiples of
    `multiple`, the patch size)."""
    h, w = rgb.shape[:2]
    if h % multiple or w % multiple:
        raise ImageError(
            f"{source}: size {h}x{w} (HxW) is not a multiple of {multiple} on both sides, as "
            f"--size native requires; crop it (e.g. to {h // multiple * multiple}x"
            f"{w // multiple * multiple}) or use --size 518")
    return normalize_imagenet(rgb.astype(np.float64) / 255.0)
