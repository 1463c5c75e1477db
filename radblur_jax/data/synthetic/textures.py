"""Texture sources for the synthetic dataset: photographs that ship with scikit-image.

The images are read straight from the installed ``skimage/data`` folder with Pillow (no download,
no skimage import). Without scikit-image, procedural textures (filtered noise and stripes) stand
in, and ``texture_source()`` says so, so a manifest records which one a dataset was made from.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

# Photographs and textures bundled with scikit-image (grayscale ones are expanded to RGB).
PHOTO_NAMES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png",
    "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)
_SCALE_RANGE = (0.7, 2.0)  # photo pixels per output pixel (log-uniform); >1 uses a pyrDown level


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    return path if path.is_dir() else None


def texture_source() -> str:
    """Which textures this install uses: ``"skimage-<version>"`` or ``"procedural"``."""
    if _skimage_data_dir() is None:
        return "procedural"
    from importlib.metadata import version

    return f"skimage-{version('scikit-image')}"


def _procedural_photos(count: int = 12, size: int = 512) -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for i in range(count):
        img = np.zeros((size, size, 3), np.float32)
        for octave in range(5):
            sigma = 2.0 ** (octave + 0.5)
            noise = cv2.GaussianBlur(rng.standard_normal((size, size, 3)).astype(np.float32),
                                     (0, 0), sigma)
            img += noise / (noise.std() + 1e-6) * 0.6 ** octave
        freq = rng.uniform(0.02, 0.2)
        angle = rng.uniform(0, math.pi)
        stripes = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        img += (i % 2) * stripes[..., None] * 1.5
        img = (img - img.min()) / (img.max() - img.min() + 1e-6)
        out.append(img.astype(np.float32))
    return out


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """All texture photos as ``(full, half)`` pairs of ``(h, w, 3)`` float32 sRGB in [0, 1].

    ``half`` is a ``cv2.pyrDown`` of ``full``, used when a texture is sampled at a shrinking
    scale (avoids aliasing). Cached per process.
    """
    from PIL import Image

    data_dir = _skimage_data_dir()
    if data_dir is None:
        photos = _procedural_photos()
    else:
        photos = []
        for name in PHOTO_NAMES:
            path = data_dir / name
            if not path.exists():
                continue
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            photos.append(rgb)
        if not photos:
            raise FileNotFoundError(f"no texture photos found in {data_dir}; "
                                    f"expected {PHOTO_NAMES}")
    return tuple((p, cv2.pyrDown(p)) for p in photos)


def color_jitter(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Random saturation, per-channel gain and brightness; ``(h, w, 3)`` sRGB in [0, 1]."""
    gray = rgb.mean(axis=-1, keepdims=True)
    sat = rng.uniform(0.3, 1.6)
    gains = rng.uniform(0.6, 1.3, size=3).astype(np.float32) * rng.uniform(0.6, 1.25)
    out = (gray + sat * (rgb - gray)) * gains
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def cut_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a random photo, rotated, scaled and colour-jittered.

    Returns ``(height, width, 3)`` float32 sRGB in [0, 1]; regions beyond the photo are mirrored.
    """
    photos = load_photos()
    full, half = photos[rng.integers(len(photos))]
    scale = math.exp(rng.uniform(math.log(_SCALE_RANGE[0]), math.log(_SCALE_RANGE[1])))
    src = full
    if scale > 1.0:
        src, scale = half, scale / 2.0
    angle = rng.uniform(-math.pi, math.pi) if rng.random() < 0.5 else 0.0
    flip = -1.0 if rng.random() < 0.5 else 1.0
    centre = np.array([rng.uniform(0, src.shape[1]), rng.uniform(0, src.shape[0])])
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # Output pixel (x, y) samples source at centre + R * S * (flip * (x - w/2), y - h/2).
    inv = np.array([[cos * flip, -sin, 0.0], [sin * flip, cos, 0.0]], np.float64)
    offset = np.array([width / 2.0, height / 2.0])
    inv[:, 2] = centre - inv[:, :2] @ offset
    patch = cv2.warpAffine(src, inv, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT_101)
    return color_jitter(rng, patch)
