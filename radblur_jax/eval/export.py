"""Serialise the inference function with `jax.export`: fixed image size, any batch size.

    python -m radblur_jax.eval.export --checkpoint TRAIN_WORKDIR --height 720 --width 1280 \
        --output exported/ [--platforms cpu,cuda] [--tile 384 --overlap 32]

Writes to the output directory:
    inference.jaxexport   `jax.export.Exported.serialize()` of
                          `f(params, blurry (b, H, W, 3) f32) -> (restored (b, H, W, 3),
                          disparity (b, H, W))`, b symbolic
    params.msgpack        the weights (`flax.serialization.msgpack_serialize`)
    export.json           size, platforms, model, inference options, jax version

Running it needs jax (and flax.serialization for the weights), not this package's model code:
`load_exported(dir)` below shows the few lines it takes.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from radblur_jax.atomic_io import write_bytes_atomic, write_json_atomic
from radblur_jax.cli_args import OneLineParser, output_dir_problem

EXPORT_FILE = "inference.jaxexport"
PARAMS_FILE = "params.msgpack"
META_FILE = "export.json"


def export_inference(model: Any, params: Any, height: int, width: int, *,
                     platforms: Sequence[str] = ("cpu",), options: Any = None
                     ) -> jax.export.Exported:
    """`jax.export` of `restore_fn(model, options)` for `(b, height, width, 3)` inputs
    (b symbolic)."""
    from radblur_jax.eval.inference import InferenceOptions, restore_fn

    fn = restore_fn(model, options if options is not None else InferenceOptions())

    def per_image(p, x):
        # The batch is symbolic; the model sees one static image at a time (its kernels may
        # plan work from the batch size), looped with lax.map.
        restored, disparity = jax.lax.map(lambda xi: fn(p, xi[None]), x)
        return restored[:, 0], disparity[:, 0]

    (b,) = jax.export.symbolic_shape("b")
    x_spec = jax.ShapeDtypeStruct((b, height, width, 3), jnp.float32)
    p_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.float32), params)
    return jax.export.export(jax.jit(per_image), platforms=tuple(platforms))(p_spec, x_spec)


def save_export(out_dir: str, exported: jax.export.Exported, params: Any,
                metadata: dict) -> list[str]:
    """Writes the three files (atomically); returns their paths."""
    from flax import serialization

    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in (EXPORT_FILE, PARAMS_FILE, META_FILE)]
    write_bytes_atomic(paths[0], bytes(exported.serialize()))
    host = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    write_bytes_atomic(paths[1], serialization.msgpack_serialize(host))
    write_json_atomic(paths[2], {**metadata, "platforms": list(exported.platforms),
                                 "jax_version": jax.__version__})
    return paths


def load_exported(export_dir: str) -> Callable[[np.ndarray], tuple[jax.Array, jax.Array]]:
    """`f(blurry (b, H, W, 3) float32) -> (restored, disparity)` from an export directory.

    Uses only jax and flax.serialization (no model code).
    """
    from flax import serialization

    with open(os.path.join(export_dir, EXPORT_FILE), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with open(os.path.join(export_dir, PARAMS_FILE), "rb") as f:
        params = serialization.msgpack_restore(f.read())
    return lambda x: exported.call(params, jnp.asarray(x, jnp.float32))


def build_parser() -> argparse.ArgumentParser:
    from radblur_jax.models.configs import radblur_names

    p = OneLineParser(prog="python -m radblur_jax.eval.export",
                                description="Serialise RADBlur inference with jax.export.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training workdir or checkpoint step directory")
    src.add_argument("--random-init", metavar="PRESET", choices=radblur_names(),
                     help="random weights (tests, benchmarks only)")
    p.add_argument("--height", type=int, required=True, help="image height in px")
    p.add_argument("--width", type=int, required=True, help="image width in px")
    p.add_argument("--output", required=True, help="directory for the exported files")
    p.add_argument("--platforms", default="cpu", help="comma-separated: cpu, cuda, rocm, tpu")
    p.add_argument("--tile", type=int, default=0, help="sliding windows (0 = whole image)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--self-ensemble", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from radblur_jax.eval.inference import InferenceOptions
    from radblur_jax.eval.loading import CheckpointLoadError, load_random, load_trained

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.height < 1 or args.width < 1:
        parser.error("--height and --width must be positive")
    platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
    bad = [s for s in platforms if s not in ("cpu", "cuda", "rocm", "tpu")]
    if bad or not platforms:
        parser.error(f"--platforms: unknown {bad or args.platforms!r}; "
                     "expected cpu, cuda, rocm, tpu")
    problem = output_dir_problem(args.output)
    if problem:
        parser.error(f"--output {args.output}: {problem}")
    try:
        options = InferenceOptions(tile=args.tile, overlap=args.overlap,
                                   self_ensemble=args.self_ensemble)
    except ValueError as e:
        parser.error(str(e))
    try:
        loaded = (load_random(args.random_init, args.seed) if args.random_init
                  else load_trained(args.checkpoint))
    except CheckpointLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    exported = export_inference(loaded.model, loaded.params, args.height, args.width,
                                platforms=platforms, options=options)
    meta = {"model": loaded.description, "height": args.height, "width": args.width,
            "batch": "symbolic (any)", "inference": dataclasses.asdict(options),
            "inputs": "params, blurry (b, H, W, 3) float32 in [0, 1]",
            "outputs": "restored (b, H, W, 3) float32 (unclipped), disparity (b, H, W) float32"}
    for path in save_export(args.output, exported, loaded.params, meta):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
