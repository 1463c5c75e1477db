"""The demo page's work without the page: one uploaded file -> a `PageResult` (previews, depth
colour map, the restored PNG to download) or a readable message; nothing here imports Gradio.

The file goes through the deblur CLI's own code paths (`deblur.read_checked`,
`deblur.restore_photos`, `deblur.write_restored`) with a `Restorer` built like the CLI's, so the
download equals the CLI's output for the same photo, checkpoint and options, bit for bit.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import tempfile
import time
import traceback
from typing import Any

import numpy as np

from radblur_jax import deblur
from radblur_jax.data.image_io import colorize_disparity
from radblur_jax.eval.inference import InferenceOptions, Restorer

DEFAULT_MAX_MEGAPIXELS = 24.0
KEEP_DOWNLOADS = 8  # the last few restored files stay on disk; older ones are removed


@dataclasses.dataclass
class PageResult:
    """What the page shows for one upload. On failure only `message` is set (readable, names
    the file, no traceback); `ok` tells which."""
    message: str
    blurry: np.ndarray | None = None      # (H, W, 3) uint8 preview of the input
    restored: np.ndarray | None = None    # (H, W, 3) uint8 preview of the output
    depth: np.ndarray | None = None       # (H, W, 3) uint8 colour map (near = bright)
    download: str | None = None           # the restored PNG: input's size, bit depth and mode
    steps: np.ndarray | None = None       # sub-decoders run per window
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.download is not None


def preview(image: np.ndarray) -> np.ndarray:
    """An image as `deblur.encode_photo` writes it (uint8/uint16; gray, gray+alpha, RGB or
    RGBA) -> `(H, W, 3)` uint8 RGB for the screen (alpha dropped, 16 bits rounded to 8)."""
    x = np.asarray(image)
    if x.dtype == np.uint16:
        x = np.round(x.astype(np.float64) / 257.0).astype(np.uint8)
    if x.ndim == 3 and x.shape[2] == 2:  # gray + alpha
        x = x[:, :, 0]
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    return np.ascontiguousarray(x[:, :, :3])


class DemoSession:
    """One loaded model behind the page: `restore_upload(path) -> PageResult`.

    `Restorer` jits once per input size (its jit cache); photos larger than `options.tile` px
    on a side go through the CLI's sliding windows, or, with `tiling` (`Restorer` keywords:
    `deblur.auto_tiling()`), those its rule sends there; photos above `max_megapixels` are
    refused before they are decoded.
    """

    def __init__(self, model: Any, params: Any, *, description: str,
                 options: InferenceOptions, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
                 out_dir: str | None = None, tiling: dict | None = None):
        self.description = description
        self.options = options
        self.max_pixels = int(max_megapixels * 1e6)
        self.restorer = Restorer(model, params, options, **(tiling or {}))
        self.out_dir = out_dir or tempfile.mkdtemp(prefix="radblur_demo_")
        os.makedirs(self.out_dir, exist_ok=True)
        self._sizes_seen: set[tuple[int, int]] = set()
        self._recent: collections.deque[str] = collections.deque()

    def restore_upload(self, path: str | None, name: str | None = None) -> PageResult:
        """Restores the uploaded file at `path` (`name`: the name the person knows it by)."""
        if not path:
            return PageResult("Drop a photo (PNG, JPEG, TIFF, WebP, BMP) to restore it.")
        name = name or os.path.basename(path)
        try:
            return self._restore(path, name)
        except deblur.PhotoError as e:
            return PageResult(f"**Cannot restore `{name}`**: {_named(str(e), path, name)}")
        except Exception as e:  # noqa: BLE001 - the page must keep serving; details go to the log
            traceback.print_exc()
            return PageResult(f"**Cannot restore `{name}`**: {type(e).__name__}: "
                              f"{_named(str(e), path, name)}")

    def _restore(self, path: str, name: str) -> PageResult:
        h, w = deblur.upright_size(path)
        if h * w > self.max_pixels:
            raise deblur.PhotoError(
                f"{path}: {w} x {h} px = {h * w / 1e6:.2f} MP; this page takes photos up to "
                f"{self.max_pixels / 1e6:.2f} MP (demo --max-megapixels), the deblur CLI any size")
        photo = deblur.read_checked(path, (h, w))
        compiles = (h, w) not in self._sizes_seen
        t0 = time.perf_counter()
        (result,) = deblur.restore_photos(self.restorer.restore, [photo])
        seconds = time.perf_counter() - t0
        self._sizes_seen.add((h, w))
        out_dir = tempfile.mkdtemp(dir=self.out_dir)
        self._recent.append(out_dir)
        while len(self._recent) > KEEP_DOWNLOADS:
            shutil.rmtree(self._recent.popleft(), ignore_errors=True)
        stem = os.path.splitext(os.path.basename(name))[0] or "photo"
        download = os.path.join(out_dir, f"{stem}_restored.png")
        deblur.write_restored(download, result)
        blurry = np.clip(np.round(photo.rgb * 255.0), 0, 255).astype(np.uint8)
        notes = [f"**{w} x {h} px** restored by {self.description} in **{seconds:.2f} s**"
                 + (" (includes compiling the model for this size)" if compiles else "") + ".",
                 f"Exit head: **{deblur.steps_text(result.steps)}**"
                 + ("" if self.options.adaptive else " (adaptive exit off: all run)") + "."]
        if len(result.steps) > 1:
            notes.append(f"Large photo: restored in {len(result.steps)} overlapping tiles, "
                         "blended as by the deblur CLI's --tile.")
        notes += _mode_notes(photo)
        return PageResult("\n\n".join(notes), blurry=blurry, restored=preview(result.image),
                          depth=colorize_disparity(result.disparity), download=download,
                          steps=result.steps, seconds=seconds)


def _mode_notes(photo: deblur.Photo) -> list[str]:
    notes = []
    if photo.bits == 16:
        notes.append("16-bit photo: the download is a 16-bit PNG (the previews show 8 bits).")
    if photo.gray:
        notes.append("Grayscale photo: restored in RGB, saved as grayscale like the input.")
    if photo.alpha is not None:
        notes.append("The alpha channel is carried over unchanged into the download.")
    return notes


def _named(message: str, path: str, name: str) -> str:
    """The message without the server's upload path (the page names the file already)."""
    if message.startswith(path + ": "):
        message = message[len(path) + 2:]
    return message.replace(path, name)
