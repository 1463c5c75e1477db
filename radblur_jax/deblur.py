"""Deblur a photo or a folder of photos with a trained RADBlur.

    python -m radblur_jax.deblur --checkpoint TRAIN_WORKDIR --input photo.jpg --output out/
    python -m radblur_jax.deblur --checkpoint DIR --input photos/ --output out/ --tile 512 --depth
    python -m radblur_jax.deblur --checkpoint DIR --input photo.jpg --output out/ --adaptive
    python -m radblur_jax.deblur --random-init tiny --input photos/ --output out/  # smoke test

Writes `<output>/<stem>.png` per input at the input's own size, bit depth (8 or 16) and mode
(grayscale stays grayscale, an alpha channel is carried over unchanged); EXIF orientation is
applied, so outputs are upright. `--depth` adds `<stem>_depth.png` (colour map) and
`<stem>_depth.npy` (float32 relative disparity, larger = nearer). Images of one size are
batched and compiled once. `--adaptive` runs per image (per window with `--tile`) only the
sub-decoders the exit head asks for. A file that cannot be read is named on stderr and
skipped; the exit status is then 1. Inputs are never overwritten.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from radblur_jax.cli_args import OneLineParser, output_dir_problem
from radblur_jax.data import image_io
from radblur_jax.data.image_io import IMAGE_EXTS, DataError, list_images, save_png

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


def list_inputs(path: str) -> list[str]:
    """An image file, or the images (by suffix) directly inside a directory, sorted."""
    try:
        files = list_images(path)
    except DataError as e:
        raise PhotoError(str(e)) from None
    if not files:
        raise PhotoError(f"{path}: no images ({', '.join(IMAGE_EXTS)})")
    return files


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


def output_paths(inputs: Sequence[str], out_dir: str) -> dict[str, str]:
    """Input path -> `<out_dir>/<stem>.png`; raises PhotoError on a clash of names or when an
    output would replace an input."""
    outs: dict[str, str] = {}
    seen: dict[str, str] = {}
    real_inputs = {os.path.realpath(p) for p in inputs}
    for p in inputs:
        stem = os.path.splitext(os.path.basename(p))[0]
        out = os.path.join(out_dir, stem + ".png")
        if out in seen:
            raise PhotoError(f"{p}: same output name {out} as {seen[out]}")
        extra = [out] + [os.path.join(out_dir, stem + s) for s in ("_depth.png", "_depth.npy")]
        clash = next((o for o in extra if os.path.realpath(o) in real_inputs), None)
        if clash:
            raise PhotoError(f"{p}: output {clash} would overwrite an input; choose another "
                             "--output directory")
        seen[out] = p
        outs[p] = out
    return outs


def read_checked(path: str, size: tuple[int, int] | None = None) -> Photo:
    """`read_photo`, with the decoded size checked against the header's upright `(H, W)`
    (`size`, read here when None); raises PhotoError."""
    size = upright_size(path) if size is None else size
    photo = read_photo(path)
    if photo.rgb.shape[:2] != size:
        raise PhotoError(f"{path}: decoded size {photo.rgb.shape[:2]} differs from its header "
                         f"{size}")
    return photo


@dataclasses.dataclass
class Restored:
    """One restored photo: image (the array to save: input's mode and bit depth, see
    `encode_photo`), disparity `(H, W)` float32, steps: sub-decoders run per window `(N,)` (None
    when the restorer does not say)."""
    image: np.ndarray
    disparity: np.ndarray
    steps: np.ndarray | None


def restore_photos(restorer: Callable[[np.ndarray], Sequence[np.ndarray]],
                   photos: Sequence[Photo], batch: int = 1) -> list[Restored]:
    """Restores same-size `photos` in one call of `restorer` (`(B, H, W, 3)` -> `(restored,
    disparity[, steps])`, e.g. `Restorer.restore`); the stack is padded to `batch` images by
    repeating the last, so each size compiles once."""
    x = np.stack([ph.rgb for ph in photos])
    if len(photos) < batch:
        x = np.concatenate([x, np.repeat(x[-1:], batch - len(photos), axis=0)])
    out = restorer(x)
    steps = out[2] if len(out) > 2 else None
    return [Restored(encode_photo(out[0][j], ph), np.asarray(out[1][j], np.float32),
                     None if steps is None else np.asarray(steps[j]))
            for j, ph in enumerate(photos)]


def write_restored(out_path: str, result: Restored, depth: bool = False) -> None:
    """Writes `out_path` (PNG) and with `depth` `<stem>_depth.png` and `<stem>_depth.npy`."""
    save_png(out_path, result.image)
    if depth:
        stem = os.path.splitext(out_path)[0]
        save_png(stem + "_depth.png", image_io.colorize_disparity(result.disparity))
        _save_npy(stem + "_depth.npy", result.disparity)


def deblur_files(restorer: Callable[[np.ndarray], Sequence[np.ndarray]],
                 inputs: Sequence[str], out_dir: str, *, batch: int = 1, depth: bool = False,
                 progress: bool = True, err: Callable[[str], None] = print) -> list[str]:
    """Restores `inputs` into `out_dir`; returns the failed input paths (each reported via
    `err`). Images of one upright size are batched (padded to `batch`: one compile per size).
    `restorer` as for `restore_photos`."""
    from tqdm import tqdm

    outs = output_paths(inputs, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    failed: list[str] = []
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for p in inputs:
        try:
            groups[upright_size(p)].append(p)
        except PhotoError as e:
            err(f"error: {e}; skipped")
            failed.append(p)
    bar = tqdm(total=len(inputs), unit="img", disable=not progress, file=sys.stderr)
    bar.update(len(failed))
    for size, paths in groups.items():
        for start in range(0, len(paths), batch):
            photos: list[tuple[str, Photo]] = []
            for p in paths[start:start + batch]:
                try:
                    photos.append((p, read_checked(p, size)))
                except PhotoError as e:
                    err(f"error: {e}; skipped")
                    failed.append(p)
                    bar.update(1)
            if not photos:
                continue
            results = restore_photos(restorer, [ph for _, ph in photos], batch)
            for (p, _), result in zip(photos, results):
                write_restored(outs[p], result, depth)
                steps = "" if result.steps is None else f" ({steps_text(result.steps)})"
                bar.set_postfix_str(os.path.basename(p) + steps)
                bar.update(1)
    bar.close()
    return failed


def steps_text(steps: np.ndarray) -> str:
    """Sub-decoders run, for people: "4 sub-decoders", or per window "2-4 sub-decoders per
    tile (mean 3.2)"."""
    steps = np.asarray(steps).ravel()
    lo, hi = int(steps.min()), int(steps.max())
    if steps.size == 1 or lo == hi:
        return f"{lo} sub-decoder{'s' if lo != 1 else ''}" + (
            f" in each of {steps.size} tiles" if steps.size > 1 else "")
    return f"{lo}-{hi} sub-decoders per tile (mean {steps.mean():.1f} over {steps.size})"


def _save_npy(path: str, arr: np.ndarray) -> None:
    from radblur_jax.atomic_io import write_atomic

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(arr, np.float32))
    write_atomic(path, write)


def build_parser() -> argparse.ArgumentParser:
    from radblur_jax.eval.loading import add_model_arguments

    p = OneLineParser(prog="python -m radblur_jax.deblur",
                                description="Deblur photos with a trained RADBlur.")
    add_model_arguments(p)
    p.add_argument("--input", required=True, help="an image or a directory of images "
                   f"({', '.join(IMAGE_EXTS)})")
    p.add_argument("--output", required=True, help="directory for <stem>.png (never an input)")
    p.add_argument("--tile", type=int, default=0, help="sliding windows of this many px for "
                   "images too large for memory (0 = whole image)")
    p.add_argument("--overlap", type=int, default=32, help="px shared by neighbouring windows")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations "
                   "(8x slower)")
    p.add_argument("--adaptive", action="store_true", help="adaptive exit: run only the "
                   "sub-decoders the exit head asks for, per image or per --tile window")
    p.add_argument("--depth", action="store_true", help="also write <stem>_depth.png/.npy")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (same size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    if args.tile < 0 or args.overlap < 0 or (args.tile and args.overlap >= args.tile):
        parser.error("--tile and --overlap must be >= 0, with --overlap < --tile")
    from radblur_jax.eval.inference import InferenceOptions, Restorer
    from radblur_jax.eval.loading import CheckpointLoadError, load_from_args

    try:
        problem = output_dir_problem(args.output)
        if problem:
            raise PhotoError(f"--output {args.output}: {problem}")
        inputs = list_inputs(args.input)
        output_paths(inputs, args.output)  # refuse to overwrite inputs before loading anything
        loaded = load_from_args(args)
    except (PhotoError, CheckpointLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = InferenceOptions(tile=args.tile, overlap=args.overlap,
                               self_ensemble=args.self_ensemble, adaptive=args.adaptive)
    restorer = Restorer(loaded.model, loaded.params, options)
    failed = deblur_files(restorer.restore, inputs, args.output, batch=args.batch, depth=args.depth,
                          progress=not args.no_progress,
                          err=lambda m: print(m, file=sys.stderr))
    done = len(inputs) - len(failed)
    print(f"{done} of {len(inputs)} images restored into {args.output}"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from radblur_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages(forward_only=True)
    sys.exit(main())
