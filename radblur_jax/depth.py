"""Depth maps for a photo or a folder of photos with a Depth Anything V2 model.

    python -m radblur_jax.depth --checkpoint DIR --input PATH_OR_DIR --output OUT_DIR
    python -m radblur_jax.depth --random-init tiny --input PATH --output OUT_DIR   # smoke test

Writes per image `<stem>.npy`, float32 `(H, W)`: what the checkpoint's head predicts, relative
disparity (larger = nearer, arbitrary scale and shift) for a relative model, depth in metres
(`[0, max_depth]`, larger = farther) for a metric one (`dpt.head` in its config.json); and
`<stem>.png` (OpenCV's inferno colour map of those values, per image min-max). `--size 518`
preprocesses as Depth Anything V2 does and resizes the prediction back (bilinear, align_corners);
`--size native` runs at the image's own size, whose sides must be multiples of the model's patch
size (14).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from radblur_jax import preprocess
from radblur_jax.atomic_io import write_atomic
from radblur_jax.cli_args import OneLineParser, output_dir_problem
from radblur_jax.data import image_io
from radblur_jax.models.configs import PATCH_SIZE, dinov2_names, radblur_names
from radblur_jax.preprocess import ImageError

SIZE_CHOICES = tuple(dict.fromkeys(radblur_names() + dinov2_names()))

def colormap_lut() -> np.ndarray:
    """`(256, 3)` uint8 RGB inferno lookup table (OpenCV's), dark (low) to bright (high): near is
    bright for disparity, far is bright for metric depth."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_INFERNO)[:, 0, ::-1])


def input_images(path: str) -> list[str]:
    """`image_io.list_images(path)`: an image file, or the images directly inside a directory;
    an empty directory is an ImageError."""
    try:
        files = image_io.list_images(path)
    except image_io.DataError as e:
        raise ImageError(str(e)) from None
    if not files:
        raise ImageError(f"{path}: no images ({', '.join(preprocess.IMAGE_SUFFIXES)})")
    return files


def save_outputs(out_dir: str, stem: str, disparity: np.ndarray) -> tuple[str, str]:
    """Write `<stem>.npy` (float32) and `<stem>.png` (colour map) atomically. `disparity` is the
    model's output: disparity (relative head) or depth in metres (metric head)."""
    from PIL import Image

    npy, png = os.path.join(out_dir, stem + ".npy"), os.path.join(out_dir, stem + ".png")

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(disparity, np.float32))

    write_atomic(npy, write_npy)
    colours = image_io.colorize_disparity(disparity)
    write_atomic(png, lambda tmp: Image.fromarray(colours).save(tmp, format="PNG"))
    return npy, png


def random_depth_model(preset: str, seed: int = 0) -> tuple[Any, Any]:
    """`(DepthAnything module, random params)` for a preset name: smoke tests only.

    Shapes come from `jax.eval_shape(module.init)`; values are drawn in numpy (kernels
    N(0, 1/fan_in), scales 1, biases/tokens N(0, 0.02)): far faster than compiling `init`.
    """
    from radblur_jax.models import configs
    from radblur_jax.models.backends import resolve_backend
    from radblur_jax.models.depth_anything import DepthAnything

    enc = configs.encoder_config(preset)
    module = DepthAnything(enc, configs.dpt_config(preset), resolve_backend())
    side = 2 * enc.patch_size
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name in ("scale", "gamma"):
            return jnp.ones(shape, jnp.float32)
        std = 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1])))) if name == "kernel" else 0.02
        return jnp.asarray(rng.normal(0.0, std, shape), jnp.float32)

    return module, jax.tree_util.tree_map_with_path(draw, shapes)


def make_predictor(module: Any, params: Any) -> Callable[[np.ndarray], np.ndarray]:
    """`f(x (B, H, W, 3) normalised) -> (B, H, W) float32` disparity (relative head) or depth
    in metres (metric head), jitted (once per shape)."""
    @jax.jit
    def forward(p, x):
        return module.apply({"params": p}, x, return_features=False).disparity

    return lambda x: np.asarray(forward(params, jnp.asarray(x)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize_back(d: jax.Array, height: int, width: int) -> jax.Array:
    from radblur_jax.models.layers import bilinear_resize
    return bilinear_resize(d[None, :, :, None], (height, width), align_corners=True)[0, :, :, 0]


def resize_to(disparity: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(h, w)` -> `(height, width)` bilinear, align_corners=True (as Depth Anything V2)."""
    if disparity.shape == (height, width):
        return np.asarray(disparity, np.float32)
    return np.asarray(_resize_back(jnp.asarray(disparity, jnp.float32), height, width))


def check_output_dir(out_dir: str) -> None:
    """ImageError unless `out_dir` is a writable directory or can be created as one."""
    problem = output_dir_problem(out_dir)
    if problem:
        raise ImageError(f"--output {out_dir}: {problem}")


def run_depth(predict: Callable[[np.ndarray], np.ndarray], images: Sequence[str], out_dir: str,
              *, size: str = "518", batch: int = 1, patch_size: int = PATCH_SIZE,
              log: Callable[[str], None] = print) -> list[str]:
    """Predict and save the depth map (disparity, or metres for a metric model) of each image
    path; returns the written `.npy` paths.

    `size`: "native" or a positive multiple of `patch_size` (as a string or int).
    """
    size = str(size)
    if size != "native" and not (size.isdigit() and int(size) > 0
                                 and int(size) % patch_size == 0):
        raise ValueError(f"size must be 'native' or a positive multiple of {patch_size}, "
                         f"got {size!r}")
    check_output_dir(out_dir)
    stems: dict[str, str] = {}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ImageError(f"{path}: same output name {stem!r} as {stems[stem]}")
        stems[stem] = path
    # Read and preprocess everything first so a bad image fails before any output is written.
    groups: dict[tuple[int, ...], list[tuple[str, tuple[int, int], np.ndarray]]] = defaultdict(list)
    for path in images:
        rgb = preprocess.load_rgb(path)
        if size == "native":
            x = preprocess.preprocess_native(rgb, multiple=patch_size, source=path)
        else:
            x = preprocess.preprocess_da_v2(rgb, target=int(size), multiple=patch_size)
        groups[x.shape].append((path, rgb.shape[:2], x))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for shape, items in groups.items():
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            x = np.stack([c[2] for c in chunk])
            if len(chunk) < batch:  # pad to a full batch: one compilation per shape
                x = np.concatenate([x, np.repeat(x[-1:], batch - len(chunk), axis=0)])
            t0 = time.perf_counter()
            disp = predict(x)
            dt = time.perf_counter() - t0
            for (path, (h, w), _), d in zip(chunk, disp):
                d = d if size == "native" else resize_to(d, h, w)
                npy, png = save_outputs(out_dir, os.path.splitext(os.path.basename(path))[0], d)
                written.append(npy)
                log(f"{path}: {h}x{w} -> net {shape[0]}x{shape[1]}, "
                    f"disparity or metric depth [{d.min():.4g}, {d.max():.4g}] -> {npy}, {png} "
                    f"({dt:.2f} s batch)")
    return written


def _size_arg(value: str) -> str:
    """argparse type of --size: 'native' or a positive integer (the patch check comes later)."""
    if value == "native" or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"expected 'native' or a positive multiple of the patch "
                                     f"size ({PATCH_SIZE}), got {value!r}")


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    suffixes = ", ".join(s.lstrip(".") for s in preprocess.IMAGE_SUFFIXES)
    p = OneLineParser(
        prog="python -m radblur_jax.depth",
        description="Depth maps with a converted Depth Anything V2 model: relative disparity "
                    "(larger = nearer) for a relative checkpoint, depth in metres (larger = "
                    "farther) for a metric one.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="converted checkpoint directory "
                     "(made by tools/convert_weights.py from a Depth Anything V2 checkpoint)")
    src.add_argument("--random-init", metavar="SIZE", choices=SIZE_CHOICES,
                     help="SMOKE TEST ONLY, instead of --checkpoint: random weights for a model "
                          f"size ({', '.join(SIZE_CHOICES)}); the depth maps are meaningless")
    p.add_argument("--input", required=True, help="an image or a directory of images "
                   f"({suffixes}; case-insensitive)")
    p.add_argument("--output", required=True,
                   help="directory for <stem>.npy (disparity, or metres for a metric model) "
                        "and <stem>.png (colour map); created if missing")
    p.add_argument("--size", default="518", type=_size_arg,
                   help=f"'518' (default; any positive multiple of the patch size, {PATCH_SIZE}): "
                        "Depth Anything V2 resize of the short side; 'native': the image's own "
                        "size, sides multiples of the patch size")
    p.add_argument("--batch", type=_positive_int, default=1,
                   help="images per forward pass (same shape)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from radblur_jax.convert.readers import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        check_output_dir(args.output)
        images = input_images(args.input)
        if args.random_init:
            module, params = random_depth_model(args.random_init, args.seed)
        else:
            from radblur_jax.convert.checkpoint import load_pretrained
            module, params, config = load_pretrained(args.checkpoint)
            if config["model"] != "depth_anything":
                raise CheckpointError(
                    f"{args.checkpoint}: holds a {config['model']!r} encoder without a depth head; "
                    "convert a Depth Anything V2 checkpoint")
        patch = int(module.encoder_cfg.patch_size)
        if args.size != "native" and int(args.size) % patch:
            raise ImageError(f"--size {args.size}: expected 'native' or a positive multiple of "
                             f"the model's patch size {patch}")
        if args.random_init:  # after the argument checks: an error stays one line
            print(f"WARNING: --random-init {args.random_init}: RANDOM WEIGHTS, a smoke test of the "
                  "pipeline; the depth maps are meaningless.", file=sys.stderr)
        run_depth(make_predictor(module, params), images, args.output, size=args.size,
                  batch=args.batch, patch_size=patch)
    except (ImageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from radblur_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages(forward_only=True)
    sys.exit(main())
