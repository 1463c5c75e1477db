#!/usr/bin/env python
"""Convert a DINOv2 / Depth Anything V2 PyTorch checkpoint into a radblur_jax checkpoint directory.

    python tools/convert_weights.py --input depth_anything_v2_vits.pth --output ckpt/da_vits
    python tools/convert_weights.py --input depth_anything_v2_metric_hypersim_vits.pth \
        --output ckpt/da_metric_vits     # metric, max depth 20 m: read from the official name
    python tools/convert_weights.py --input my_metric.pth --output ckpt/m \
        --head metric --max-depth 80     # a renamed file: say what it is

Inputs: .pth/.pt/.bin (torch.load weights_only), .safetensors, or a transformers model directory
(Depth Anything V1 files are refused). Every failure is one line `error: ...` naming the file,
exit status 2. See docs/conversion.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from radblur_jax.cli_args import OneLineParser  # noqa: E402
from radblur_jax.convert import FORMATS, CheckpointError, convert_checkpoint  # noqa: E402
from radblur_jax.models.configs import DPT_HEADS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True,
                   help="checkpoint file (.pth/.pt/.bin/.safetensors) or transformers model dir")
    p.add_argument("--output", required=True, help="directory to create (written atomically)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                   help="source layout; 'auto' detects it from the keys (default)")
    p.add_argument("--head", choices=DPT_HEADS,
                   help="Depth Anything head type, which original .pth files do not record: "
                        "'relative' (disparity) or 'metric' (depth in metres, needs --max-depth; "
                        "DA V2 metric models: 20 indoor, 80 outdoor). Default: from a "
                        "transformers config.json (relative when it has no "
                        "depth_estimation_type, as in transformers) or an official file name "
                        "(depth_anything_v2_metric_{hypersim,vkitti}_vit*.pth: metric, 20 / 80), "
                        "else relative with a warning")
    p.add_argument("--max-depth", type=float, metavar="M",
                   help="metric head only: the model's max_depth in metres")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output directory")
    p.add_argument("--verify", action="store_true",
                   help="reload the written checkpoint, compare it with the source tensors and "
                        "run one forward pass (finite outputs)")
    return p


def verify(output: str, source: str) -> str:
    """Reload `output`; every array must equal the source's (after layout changes)."""
    import jax
    import numpy as np

    from radblur_jax.convert import keymaps, load_checkpoint, load_pretrained
    from radblur_jax.convert.checkpoint import scale_relative_output

    module, params, config = load_pretrained(output)
    loaded = load_checkpoint(source)
    with open(os.path.join(output, "conversion.json")) as f:
        info = json.load(f)
    enc = config["encoder"]
    want, _, _ = keymaps.convert_state_dict(info["format"], loaded.state_dict,
                                            num_heads=enc["num_heads"], taps=tuple(enc["taps"]),
                                            depth=enc["depth"])
    if info.get("relative_output_scale", 1.0) != 1.0:
        want = scale_relative_output(want, info["relative_output_scale"])
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), b)), params, want)
    bad = [jax.tree_util.keystr(k) for k, ok in jax.tree_util.tree_flatten_with_path(same)[0]
           if not ok]
    if bad:
        raise CheckpointError(f"{output}: reloaded parameters differ from the source: {bad[:6]} "
                              "(the written directory is left for inspection)")
    side = 2 * enc["patch_size"]
    x = np.random.default_rng(0).normal(size=(1, side, side, 3)).astype(np.float32)
    out = jax.jit(module.apply)({"params": params}, x)
    if not all(bool(np.isfinite(np.asarray(a)).all()) for a in jax.tree.leaves(out)):
        raise CheckpointError(f"{output}: forward pass on a {side}x{side} input is not finite "
                              "(the written directory is left for inspection)")
    return f"verified: {len(jax.tree.leaves(params))} arrays equal the source, forward finite"


def main(argv: list[str] | None = None) -> int:
    """Every failure is one line `error: <file>: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    problem = None
    if args.head == "metric" and (args.max_depth is None or not args.max_depth > 0):
        problem = "--head metric needs --max-depth M (metres, > 0)"
    if args.max_depth is not None and args.head != "metric":
        problem = "--max-depth applies only with --head metric"
    if problem:
        print(f"error: {args.input}: {problem}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        result = convert_checkpoint(args.input, args.output, format=args.format,
                                    overwrite=args.overwrite, head=args.head,
                                    max_depth=args.max_depth)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    det = result.detection
    warning = det.assumption_warning()
    if warning:
        print(warning, file=sys.stderr)
    if det.taps_source == "guessed":
        print(f"WARNING: {det.taps_summary()}", file=sys.stderr)
    print(f"detected: {det.summary()}")
    enc = det.encoder_cfg
    print(f"encoder:  embed_dim={enc.embed_dim} depth={enc.depth} heads={enc.num_heads} "
          f"ffn={enc.ffn} pos_grid={enc.pos_grid} {det.taps_summary()}")
    if det.dpt_cfg is not None:
        print(f"dpt:      features={det.dpt_cfg.features} "
              f"out_channels={tuple(det.dpt_cfg.out_channels)} {det.head_summary()}")
    if result.ignored_source_keys:
        print(f"ignored:  {len(result.ignored_source_keys)} source tensors never used by the "
              f"forward pass ({result.ignored_source_keys[0]}, ...)")
    print(f"converted {result.num_source_keys} source tensors -> {result.num_param_arrays} arrays, "
          f"{result.num_params:,} parameters -> {result.output} "
          f"({time.perf_counter() - t0:.1f} s)")
    if args.verify:
        try:
            print(verify(result.output, args.input))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
