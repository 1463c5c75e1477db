"""Relative depth (disparity) for a photo or a folder of photos with a Depth Anything V2 model.

    python -m radblur_jax.depth --checkpoint DIR --input PATH_OR_DIR --output OUT_DIR
    python -m radblur_jax.depth --random-init tiny --input PATH --output OUT_DIR   # smoke test

Writes per image `<stem>.npy` (float32 `(H, W)` relative disparity, larger = nearer) and
`<stem>.png` (colour-mapped, per image min-max). `--size 518` preprocesses as Depth Anything V2
does and resizes the prediction back (bilinear, align_corners); `--size native` runs at the image's
own size, which must be a multiple of 14 on both sides.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import defaultdict
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from radblur_jax import preprocess
from radblur_jax.atomic_io import write_atomic
from radblur_jax.data import image_io
from radblur_jax.preprocess import ImageError

# Inferno-like colormap: piecewise-linear through these (position, RGB) anchors.
_ANCHORS = np.array([
    (0.00, 0, 0, 4), (0.13, 31, 12, 72), (0.25, 87, 16, 110), (0.38, 138, 34, 106),
    (0.50, 188, 55, 84), (0.63, 228, 90, 49), (0.75, 249, 142, 9), (0.88, 245, 205, 58),
    (1.00, 252, 255, 164)], dtype=np.float64)


def colormap_lut(n: int = 256) -> np.ndarray:
    """`(n, 3)` uint8 inferno-like lookup table, dark (far) to bright (near)."""
    t = np.linspace(0.0, 1.0, n)
    lut = [np.interp(t, _ANCHORS[:, 0], _ANCHORS[:, c]) for c in (1, 2, 3)]
    return np.round(np.stack(lut, axis=-1)).astype(np.uint8)


def colorize(disparity: np.ndarray) -> np.ndarray:
    """`(H, W)` float -> `(H, W, 3)` uint8, min-max normalised per image (constant -> dark)."""
    d = np.nan_to_num(np.asarray(disparity, np.float64))
    lo, hi = float(d.min()), float(d.max())
    t = (d - lo) / (hi - lo) if hi - lo > 1e-12 * max(1.0, abs(hi)) else np.zeros_like(d)
    return colormap_lut()[np.clip(np.round(t * 255), 0, 255).astype(np.int64)]


def list_images(path: str) -> list[str]:
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
    """Write `<stem>.npy` (float32) and `<stem>.png` (colour map) atomically."""
    from PIL import Image

    npy, png = os.path.join(out_dir, stem + ".npy"), os.path.join(out_dir, stem + ".png")

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(disparity, np.float32))

    write_atomic(npy, write_npy)
    write_atomic(png, lambda tmp: Image.fromarray(colorize(disparity)).save(tmp, format="PNG"))
    return npy, png


def random_depth_model(preset: str, seed: int = 0) -> tuple[Any, Any]:
    """`(DepthAnything module, random params)` for a preset name: smoke tests only.

    Shapes come from `jax.eval_shape(module.init)`; values are drawn in numpy (kernels
    N(0, 1/fan_in), scales 1, biases/tokens N(0, 0.02)): far faster than compiling `init`.
    """
    from radblur_jax.models import presets
    from radblur_jax.models.depth_anything import DepthAnything

    module = DepthAnything(presets.encoder_config(preset), presets.dpt_config(preset))
    x = jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = getattr(path[-1], "key", ""), leaf.shape
        if name in ("scale", "gamma"):
            return jnp.ones(shape, jnp.float32)
        std = 1.0 / np.sqrt(max(1, int(np.prod(shape[:-1])))) if name == "kernel" else 0.02
        return jnp.asarray(rng.normal(0.0, std, shape), jnp.float32)

    return module, jax.tree_util.tree_map_with_path(draw, shapes)


def make_predictor(module: Any, params: Any) -> Callable[[np.ndarray], np.ndarray]:
    """`f(x (B, H, W, 3) normalised) -> (B, H, W) float32 disparity`, jitted (once per shape)."""
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


def run_depth(predict: Callable[[np.ndarray], np.ndarray], images: Sequence[str], out_dir: str,
              *, size: str = "518", batch: int = 1, log: Callable[[str], None] = print
              ) -> list[str]:
    """Predict and save disparity for each image path; returns the written `.npy` paths."""
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
            x = preprocess.preprocess_native(rgb, source=path)
        else:
            x = preprocess.preprocess_da_v2(rgb, target=int(size))
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
                npy, _ = save_outputs(out_dir, os.path.splitext(os.path.basename(path))[0], d)
                written.append(npy)
                log(f"{path}: {h}x{w} -> net {shape[0]}x{shape[1]}, "
                    f"disparity [{d.min():.4g}, {d.max():.4g}] -> {npy} ({dt:.2f} s batch)")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m radblur_jax.depth",
        description="Relative depth (disparity) maps with a converted Depth Anything V2 model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="converted checkpoint directory "
                     "(made by tools/convert_weights.py from a Depth Anything V2 checkpoint)")
    src.add_argument("--random-init", metavar="PRESET",
                     choices=("tiny", "vits", "vitb", "vitl", "vitg"),
                     help="SMOKE TEST ONLY, instead of --checkpoint: random weights for a preset "
                          "(tiny, vits, vitb, vitl, vitg); the depth maps are meaningless")
    p.add_argument("--input", required=True, help="an image or a directory of images "
                   "(png, jpg, jpeg, bmp, tif)")
    p.add_argument("--output", required=True, help="directory for <stem>.npy and <stem>.png")
    p.add_argument("--size", default="518",
                   help="'518' (default; any multiple of 14): Depth Anything V2 resize of the "
                        "short side; 'native': the image's own size, sides multiples of 14")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (same shape)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from radblur_jax.convert.io import CheckpointError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size != "native" and not (args.size.isdigit() and int(args.size) % 14 == 0):
        parser.error(f"--size must be 'native' or a positive multiple of 14, got {args.size!r}")
    if args.batch < 1:
        parser.error("--batch must be >= 1")
    try:
        images = list_images(args.input)
        if args.random_init:
            print(f"WARNING: --random-init {args.random_init}: RANDOM WEIGHTS, a smoke test of the "
                  "pipeline; the depth maps are meaningless.", file=sys.stderr)
            module, params = random_depth_model(args.random_init, args.seed)
        else:
            from radblur_jax.convert.checkpoint import load_pretrained
            module, params, config = load_pretrained(args.checkpoint)
            if config["model"] != "depth_anything":
                raise CheckpointError(
                    f"{args.checkpoint}: holds a {config['model']!r} encoder without a depth head; "
                    "convert a Depth Anything V2 checkpoint")
        run_depth(make_predictor(module, params), images, args.output, size=args.size,
                  batch=args.batch)
    except (ImageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
