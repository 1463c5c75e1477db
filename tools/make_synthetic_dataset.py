"""Generate the built-in synthetic deblurring set (blur/sharp/depth, GoPro layout).

    python tools/make_synthetic_dataset.py --output data/synthetic --num-train 64 --num-test 16 \
        --size 256x256 --seed 0 [--workers 2] [--overwrite] [--set max_shift=0.08 ...]

See docs/datasets.md ("Built-in synthetic dataset") for the layout and the parameters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

try:
    from radblur_jax.data import synthetic_writer
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from radblur_jax.data import synthetic_writer
from radblur_jax.data.synthetic import SyntheticParams


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"--size: expected HxW (e.g. 256x256), got {text!r}")
    return h, w


def _overrides(items: list[str]) -> dict:
    fields = {f.name for f in dataclasses.fields(SyntheticParams)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        out[key] = json.loads(value)  # numbers, or [a, b] for ranges
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="dataset root to create")
    parser.add_argument("--num-train", type=int, default=synthetic_writer.DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-test", type=int, default=synthetic_writer.DEFAULT_NUM_TEST)
    parser.add_argument("--size", type=_size, default=(256, 256), help="HxW, e.g. 720x1280")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames-per-scene", type=int,
                        default=synthetic_writer.DEFAULT_FRAMES_PER_SCENE)
    parser.add_argument("--workers", type=int, default=1, help="processes (same bytes for any)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--no-noise", action="store_true", help="noise_prob=0")
    parser.add_argument("--no-saturation", action="store_true", help="saturation_prob=0")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any SyntheticParams field, e.g. max_shift=0.08, depth_range=[1,20]")
    args = parser.parse_args(argv)

    fields = _overrides(args.set)
    fields.update(height=args.size[0], width=args.size[1])
    if args.no_noise:
        fields["noise_prob"] = 0.0
    if args.no_saturation:
        fields["saturation_prob"] = 0.0
    params = SyntheticParams(**fields)
    try:
        summary = synthetic_writer.write_dataset(
            args.output, args.num_train, args.num_test, params, args.seed,
            args.frames_per_scene, workers=args.workers, overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = summary["manifest"]["splits"]
    print(f"wrote {summary['root']}")
    for split, info in splits.items():
        print(f"  {split}: {info['pairs']} pairs in {info['scenes']} scenes")
    print(f"  size {params.height}x{params.width}, seed {args.seed}, "
          f"textures {summary['manifest']['texture_source']}")
    print(f"  {summary['bytes'] / 2**20:.1f} MiB in {summary['seconds']:.1f} s "
          f"({summary['pairs_per_s']:.2f} pairs/s, {args.workers} worker(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
