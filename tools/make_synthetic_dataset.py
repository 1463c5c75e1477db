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
    from radblur_jax.data.synthetic import writer
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from radblur_jax.data.synthetic import writer
from radblur_jax.cli_args import image_size, int_at_least
from radblur_jax.data.synthetic.render import SyntheticParams

_FIELDS = {f.name: f for f in dataclasses.fields(SyntheticParams)}
_RESERVED = {"height": "--size", "width": "--size"}


def _override(item: str) -> tuple[str, object]:
    """`KEY=VALUE` -> (key, value) with VALUE parsed as JSON and checked against the field."""
    key, sep, text = item.partition("=")
    if not sep or key not in _FIELDS:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY one of {sorted(set(_FIELDS) - set(_RESERVED))}, "
            f"got {item!r}")
    if key in _RESERVED:
        raise argparse.ArgumentTypeError(f"{key}: set it with {_RESERVED[key]}")
    default = _FIELDS[key].default
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(default, tuple):
        ok = (isinstance(value, list) and len(value) == len(default)
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        expected = f"a list of {len(default)} numbers, e.g. {json.dumps(list(default))}"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    if not ok:
        raise argparse.ArgumentTypeError(f"{key}: expected {expected}, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="dataset root to create")
    parser.add_argument("--num-train", type=int_at_least(0), default=writer.DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-test", type=int_at_least(0), default=writer.DEFAULT_NUM_TEST)
    parser.add_argument("--size", type=image_size, default=(256, 256), help="HxW, e.g. 720x1280")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument("--frames-per-scene", type=int_at_least(1),
                        default=writer.DEFAULT_FRAMES_PER_SCENE)
    parser.add_argument("--workers", type=int_at_least(1), default=1,
                        help="processes (same bytes for any)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--no-noise", action="store_true", help="noise_prob=0")
    parser.add_argument("--no-saturation", action="store_true", help="saturation_prob=0")
    parser.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="any SyntheticParams field, e.g. max_shift=0.08, depth_range=[1,20]")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = dict(args.set)
    fields.update(height=args.size[0], width=args.size[1])
    if args.no_noise:
        fields["noise_prob"] = 0.0
    if args.no_saturation:
        fields["saturation_prob"] = 0.0
    try:
        params = SyntheticParams(**fields)
    except ValueError as e:  # a value of the right type that the generator rejects
        parser.error(f"argument --set: {e}")
    try:
        summary = writer.write_dataset(
            args.output, args.num_train, args.num_test, params, args.seed,
            args.frames_per_scene, workers=args.workers, overwrite=args.overwrite)
    except FileExistsError as e:
        parser.error(f"argument --output: {e}")
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
