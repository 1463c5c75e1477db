"""Deblur a photo or a folder of photos with a trained RADBlur.

    python -m radblur_jax.deblur --checkpoint TRAIN_WORKDIR --input photo.jpg --output out/
    python -m radblur_jax.deblur --checkpoint DIR --input photos/ --output out/ --tile 512 --depth
    python -m radblur_jax.deblur --checkpoint DIR --input big.tif --output out/ --max-memory 8
    python -m radblur_jax.deblur --checkpoint DIR --input photo.jpg --output out/ --adaptive
    python -m radblur_jax.deblur --random-init tiny --input photos/ --output out/  # smoke test

Writes `<output>/<stem>.png` per input at the input's own size, bit depth (8 or 16) and mode
(grey, grey+alpha, RGB or RGBA: grey stays grey, an alpha channel is carried over unchanged)
and with the input's ICC colour profile; the EXIF orientation is applied exactly once for
every format, so outputs are upright (reading and writing photos: eval/photos.py). `--depth`
adds `<stem>_depth.png` (colour map) and `<stem>_depth.npy` (float32 relative disparity,
larger = nearer). Images of one size are batched and compiled once. `--tile auto` (the default)
restores each image whole unless XLA's memory analysis of the whole-image program exceeds
`--max-memory` (default: half the memory available at start) or, on a CPU, the image has more
than 2 MP (there the ViT's attention over the whole image, which grows with the square of its
pixels, makes windows faster: docs/benchmarks.md, inference.py); those sizes go through
windows of 512 px, and stderr says so. `--adaptive` runs per image (per window in window
mode) only the sub-decoders the exit head asks for. A file that cannot be read (corrupt, float
or signed pixels, more than `photos.MAX_PIXELS` pixels, ...) is named on stderr and skipped,
the others are still restored; the exit status is then 1. Inputs are never overwritten.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from radblur_jax.cli_args import OneLineParser, output_dir_problem
from radblur_jax.data import image_io
from radblur_jax.data.image_io import IMAGE_EXTS, DataError, list_images, save_png
from radblur_jax.eval.photos import (
    MAX_PIXELS,
    Photo,
    PhotoError,
    encode_photo,
    read_checked,
    upright_size,
    write_photo,
)


def list_inputs(path: str) -> list[str]:
    """An image file, or the images (by suffix) directly inside a directory, sorted."""
    try:
        files = list_images(path)
    except DataError as e:
        raise PhotoError(str(e)) from None
    if not files:
        raise PhotoError(f"{path}: no images ({', '.join(IMAGE_EXTS)})")
    return files


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


@dataclasses.dataclass
class Restored:
    """One restored photo: image (the array to save: input's mode and bit depth, see
    `encode_photo`), disparity `(H, W)` float32, steps: sub-decoders run per window `(N,)` (None
    when the restorer does not say), icc_profile: the input's, written with the image."""
    image: np.ndarray
    disparity: np.ndarray
    steps: np.ndarray | None
    icc_profile: bytes | None = None


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
                     None if steps is None else np.asarray(steps[j]), ph.icc_profile)
            for j, ph in enumerate(photos)]


def write_restored(out_path: str, result: Restored, depth: bool = False) -> None:
    """Writes `out_path` (PNG) and with `depth` `<stem>_depth.png` and `<stem>_depth.npy`."""
    write_photo(out_path, result.image, result.icc_profile)
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


def _say(message: str) -> None:
    """A line on stderr that leaves the progress bar whole (tqdm clears and redraws it)."""
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)


def auto_tiling(max_memory_gib: float | None = None) -> dict:
    """`Restorer` keywords for `--tile auto`: whole images within `max_memory_gib` (default:
    half the memory available now), else windows of `AUTO_TILE` px, as are images over
    `AUTO_WINDOWS_ABOVE` pixels on the CPU backend."""
    import jax

    from radblur_jax.eval.inference import available_memory
    if max_memory_gib is not None:
        limit = int(max_memory_gib * 2**30)
    else:
        # XLA's count leaves out the runtime and the host's copies of the photo
        # (benchmarks/photo_memory.py sets the count beside the CLI's peak resident memory).
        available = available_memory()
        limit = None if available is None else available // 2
    return dict(memory_limit=limit, fallback_tile=AUTO_TILE,
                windows_above=AUTO_WINDOWS_ABOVE if jax.default_backend() == "cpu" else None)


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
                   f"({', '.join(IMAGE_EXTS)}; up to {MAX_PIXELS / 1e6:.0f} MP each, larger "
                   "ones are skipped)")
    p.add_argument("--output", required=True, help="directory for <stem>.png (never an input)")
    p.add_argument("--tile", type=tile_arg, default="auto", help="sliding windows of this "
                   "many px (0 = whole image; auto, the default: whole unless that needs more "
                   f"than --max-memory or, on a CPU, the image has over "
                   f"{AUTO_WINDOWS_ABOVE / 1e6:g} MP; then windows of {AUTO_TILE} px)")
    p.add_argument("--max-memory", type=float, metavar="GIB", help="with --tile auto: the memory "
                   "an image's program may take, GiB (default: half of what is available)")
    p.add_argument("--overlap", type=int, default=32, help="px shared by neighbouring windows")
    p.add_argument("--self-ensemble", action="store_true", help="average the 8 flips/rotations "
                   "(8x slower)")
    p.add_argument("--adaptive", action="store_true", help="adaptive exit: run only the "
                   "sub-decoders the exit head asks for, per image or per --tile window")
    p.add_argument("--depth", action="store_true", help="also write <stem>_depth.png/.npy")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (same size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


AUTO_TILE = 512  # window side when a whole image would not fit (the demo page's default)
# Above this many pixels `--tile auto` takes windows on a CPU: there the whole image's ViT
# attention (quadratic in the pixels) outgrows the windows' overlap (docs/benchmarks.md,
# inference.py's larger frames).
AUTO_WINDOWS_ABOVE = 2_000_000


def tile_arg(value: str) -> str | int:
    """argparse type of `--tile` (the CLI's and the demo page's): "auto" or a number of px."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of px, got {value!r}") \
            from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    auto = args.tile == "auto"
    tile = AUTO_TILE if auto else args.tile
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    if tile < 0 or args.overlap < 0 or (tile and args.overlap >= tile):
        parser.error("--tile and --overlap must be >= 0, with --overlap < --tile")
    if args.max_memory is not None and (not auto or args.max_memory <= 0):
        parser.error("--max-memory takes a positive number of GiB, with --tile auto")
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
    options = InferenceOptions(tile=0 if auto else tile, overlap=args.overlap,
                               self_ensemble=args.self_ensemble, adaptive=args.adaptive)
    tiling = auto_tiling(args.max_memory) if auto else {}
    restorer = Restorer(loaded.model, loaded.params, options, on_fallback=_say, **tiling)
    failed = deblur_files(restorer.restore, inputs, args.output, batch=args.batch, depth=args.depth,
                          progress=not args.no_progress, err=_say)
    done = len(inputs) - len(failed)
    print(f"{done} of {len(inputs)} images restored into {args.output}"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    from radblur_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages(forward_only=True)
    sys.exit(main())
