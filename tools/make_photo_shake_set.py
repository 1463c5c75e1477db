"""Make the held-out check set of real photographs blurred by camera shake (paired_folder layout).

    python tools/make_photo_shake_set.py --output data/photo_shake --size 256x256 --per-photo 4 \
        --seed 0 [--no-noise] [--no-saturation]

See docs/datasets.md ("Real photographs with camera shake: a held-out check").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

# The package of the checkout holding this script comes first (not another installed copy).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from radblur_jax.cli_args import image_size, int_at_least  # noqa: E402
from radblur_jax.data.synthetic import photo_shake  # noqa: E402
from radblur_jax.data.synthetic.render import SyntheticParams  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder to create (must not exist)")
    parser.add_argument("--size", type=image_size, default=(photo_shake.DEFAULT_SIZE,) * 2,
                        help="crop HxW, e.g. 256x256 (at most 300x451: chelsea.png is 300x451)")
    parser.add_argument("--per-photo", type=int_at_least(1), default=photo_shake.DEFAULT_PER_PHOTO,
                        help="crops per photo, each with its own trajectory")
    parser.add_argument("--seed", type=int_at_least(0), default=photo_shake.DEFAULT_SEED)
    parser.add_argument("--no-noise", action="store_true", help="noise_prob=0")
    parser.add_argument("--no-saturation", action="store_true", help="saturation_prob=0")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    output = Path(args.output).expanduser()
    if output.exists():
        parser.error(f"argument --output: {output}: already exists; choose a new folder")
    fields = {"height": args.size[0], "width": args.size[1]}
    if args.no_noise:
        fields["noise_prob"] = 0.0
    if args.no_saturation:
        fields["saturation_prob"] = 0.0
    params = dataclasses.replace(SyntheticParams(), **fields)
    try:
        photos = {name: photo_shake.load_photo(name) for name in photo_shake.PHOTOS}
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, img in photos.items():
        if img.shape[0] < args.size[0] or img.shape[1] < args.size[1]:
            parser.error(f"argument --size: {args.size[0]}x{args.size[1]} is larger than "
                         f"{name} ({img.shape[0]}x{img.shape[1]})")
    try:
        root = photo_shake.write_photo_shake_set(output, size=args.size, per_photo=args.per_photo,
                                                 seed=args.seed, params=params)
    except FileExistsError as e:  # created by someone else meanwhile
        parser.error(f"argument --output: {e}")
    manifest = json.loads((root / "manifest.json").read_text())
    extents = [p["blur_extent_px"] for p in manifest["pairs"]]
    print(f"wrote {root}")
    print(f"  {len(manifest['pairs'])} pairs ({args.per_photo} per photo x "
          f"{len(manifest['photos'])} photos), {args.size[0]}x{args.size[1]}, seed {args.seed}")
    print(f"  blur extent {min(extents):.1f}-{max(extents):.1f} px; read it with "
          f"make_source({{'name': 'paired_folder', 'root': '{root}'}})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
