#!/usr/bin/env python
"""Convert a DINOv2 / Depth Anything V2 PyTorch checkpoint into a radblur_jax checkpoint directory.

    python tools/convert_weights.py --input depth_anything_v2_vits.pth --output ckpt/da_vits

Inputs: .pth/.pt/.bin (torch.load weights_only), .safetensors, or a transformers model directory.
See docs/conversion.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from radblur_jax.convert import FORMATS, CheckpointError, convert_checkpoint  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True,
                   help="checkpoint file (.pth/.pt/.bin/.safetensors) or transformers model dir")
    p.add_argument("--output", required=True, help="directory to create (written atomically)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                   help="source layout; 'auto' detects it from the keys (default)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output directory")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        result = convert_checkpoint(args.input, args.output, format=args.format,
                                    overwrite=args.overwrite)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    det = result.detection
    print(f"detected: {det.summary()}")
    enc = det.encoder_cfg
    print(f"encoder:  embed_dim={enc.embed_dim} depth={enc.depth} heads={enc.num_heads} "
          f"ffn={enc.ffn} pos_grid={enc.pos_grid} taps={tuple(enc.taps)}")
    if det.dpt_cfg is not None:
        print(f"dpt:      features={det.dpt_cfg.features} "
              f"out_channels={tuple(det.dpt_cfg.out_channels)} head={det.dpt_cfg.head}")
    if result.ignored_source_keys:
        print(f"ignored:  {len(result.ignored_source_keys)} source tensors never used by the "
              f"forward pass ({result.ignored_source_keys[0]}, ...)")
    print(f"converted {result.num_source_keys} source tensors -> {result.num_param_arrays} arrays, "
          f"{result.num_params:,} parameters -> {result.output} "
          f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
