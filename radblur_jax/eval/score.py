"""Score any method's saved outputs against ground truth with a benchmark protocol.

    python -m radblur_jax.eval.score --pred results/ --gt GoPro/test/target --protocol gopro
    python -m radblur_jax.eval.score --pred out/ --gt gt/ --protocol rsblur --saturated sat.txt

Files are matched by their path relative to `--pred` / `--gt` without the extension (folders
are searched recursively), so `a/001.png` scores against `a/001.jpg` too. Every file must have a
counterpart of the same size (else an error names them, exit 2). Prints the mean table and
writes a per-image CSV (`--csv`, default `<pred>_scores_<protocol>.csv`). A `--saturated` list
that matches none of the images is an error (exit 2), not an all-non-saturated table.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from radblur_jax.data.image_io import IMAGE_EXTS


class ScoreError(ValueError):
    """Inputs cannot be scored; the message names the files."""


def index_images(root: str) -> dict[str, str]:
    """`relative path without extension` -> path, for the images under `root` (recursive)."""
    if not os.path.isdir(root):
        raise ScoreError(f"{root}: not a directory")
    out: dict[str, str] = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_EXTS):
                path = os.path.join(d, f)
                key = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")
                if key in out:
                    raise ScoreError(f"{path}: same name as {out[key]} (extensions differ)")
                out[key] = path
    if not out:
        raise ScoreError(f"{root}: no images ({', '.join(IMAGE_EXTS)})")
    return out


def match_pairs(pred_dir: str, gt_dir: str) -> list[tuple[str, str, str]]:
    """Sorted `(key, pred_path, gt_path)`; raises ScoreError for unmatched or mis-sized files."""
    from PIL import Image

    pred, gt = index_images(pred_dir), index_images(gt_dir)
    only_pred, only_gt = sorted(set(pred) - set(gt)), sorted(set(gt) - set(pred))
    if only_pred or only_gt:
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} in {pred_dir} without ground truth (e.g. "
                         f"{', '.join(pred[k] for k in only_pred[:3])})")
        if only_gt:
            parts.append(f"{len(only_gt)} in {gt_dir} without prediction (e.g. "
                         f"{', '.join(gt[k] for k in only_gt[:3])})")
        raise ScoreError("unmatched files: " + "; ".join(parts))
    pairs = [(k, pred[k], gt[k]) for k in sorted(pred)]
    for _, p, g in pairs:
        try:
            with Image.open(p) as a, Image.open(g) as b:
                if a.size != b.size:
                    raise ScoreError(f"size mismatch: {p} is {a.size[0]}x{a.size[1]}, {g} is "
                                     f"{b.size[0]}x{b.size[1]} (WxH)")
        except (OSError, ValueError) as e:
            if isinstance(e, ScoreError):
                raise
            raise ScoreError(f"{p} or {g}: cannot read image header ({e})") from None
    return pairs


def read_saturated(path: str) -> set[str]:
    """Names from a list file (first token per line, extension dropped)."""
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: saturated-image list not found")
    with open(path) as f:
        return {os.path.splitext(ln.split()[0])[0] for ln in f if ln.strip()
                and not ln.startswith("#")}


def _is_saturated(key: str, names: set[str]) -> bool:
    return key in names or any(n.endswith("/" + key) for n in names)


def score_dirs(pred_dir: str, gt_dir: str, protocol: str, *, ssim_mode: str = "3d",
               saturated: set[str] | None = None) -> list[dict]:
    """One row per matched file: `name`, `psnr`, `ssim` (+ `ecc_ok`, `saturated`).

    With `saturated`, raises ScoreError before scoring when no image matches a listed name.
    """
    from radblur_jax.data.image_io import DataError, read_image
    from radblur_jax.eval import protocols

    pairs = match_pairs(pred_dir, gt_dir)
    if saturated is not None and not any(_is_saturated(k, saturated) for k, _, _ in pairs):
        # Every image would count as non-saturated: almost surely names that do not match.
        raise ScoreError(
            f"--saturated: none of the {len(pairs)} images matches a name in the list "
            f"({len(saturated)} names, e.g. {', '.join(sorted(saturated)[:2]) or 'none'}); "
            f"images are named by their path under --gt without extension, e.g. {pairs[0][0]}")
    rows = []
    for key, p, g in pairs:
        try:
            pred = read_image(p, allow_gray=True, drop_alpha=True)
            gt = read_image(g, allow_gray=True, drop_alpha=True)
        except DataError as e:
            raise ScoreError(str(e)) from None
        row = {"name": key, **protocols.score_batch(pred[None], gt[None], protocol,
                                                    ssim_mode=ssim_mode)[0]}
        if saturated is not None:
            row["saturated"] = _is_saturated(key, saturated)
        rows.append(row)
    return rows


def summarize(rows: list[dict], protocol: str, ssim_mode: str, label: str) -> str:
    """The mean table (markdown) of `rows`."""
    from radblur_jax.eval import protocols, reports

    columns = ["all"]
    means = [("", protocols.mean_scores(rows, ("psnr", "ssim")))]
    if rows and "saturated" in rows[0]:
        for name, flag in (("saturated", True), ("non-saturated", False)):
            columns.append(name)
            means.append((name + ": ", protocols.mean_scores(
                [r for r in rows if r["saturated"] == flag], ("psnr", "ssim"))))
    cells = [reports.psnr_ssim_cell(m) for _, m in means]
    notes = [f"{len(rows)} images; protocol {protocol}; PSNR on 8-bit levels; SSIM: "
             f"{protocols.ssim_label(protocol, ssim_mode)}."]
    notes += [n for label, m in means for n in protocols.mean_notes(m, label=label)]
    failures = sum(not r.get("ecc_ok", True) for r in rows)
    if failures:
        notes.append(f"ECC alignment failed on {failures} images (scored unaligned; "
                     "see the CSV's ecc_ok column).")
    return reports.summary_table("Scores", columns, [(label, cells)], notes)


def build_parser() -> argparse.ArgumentParser:
    from radblur_jax.eval.protocols import PROTOCOLS, SSIM_MODES

    p = argparse.ArgumentParser(prog="python -m radblur_jax.eval.score",
                                description="Score saved outputs against ground truth.")
    p.add_argument("--pred", required=True, help="directory of restored images")
    p.add_argument("--gt", required=True, help="directory of ground-truth images")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS,
                   help="gopro (also HIDE, REDS), realblur, rsblur")
    p.add_argument("--ssim", default="3d", choices=SSIM_MODES,
                   help="gopro protocol SSIM: 3d (the papers' tables) or per_channel")
    p.add_argument("--saturated", help="rsblur: list of saturated image names (relative "
                   "to --gt, one per line); adds saturated / non-saturated means")
    p.add_argument("--csv", help="per-image CSV (default <pred>_scores_<protocol>.csv)")
    p.add_argument("--label", default="method", help="row name in the printed table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from radblur_jax.eval import reports

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.saturated and args.protocol != "rsblur":
        parser.error("--saturated applies to --protocol rsblur only")
    csv_path = args.csv or f"{os.path.normpath(args.pred)}_scores_{args.protocol}.csv"
    try:
        saturated = read_saturated(args.saturated) if args.saturated else None
        rows = score_dirs(args.pred, args.gt, args.protocol, ssim_mode=args.ssim,
                          saturated=saturated)
    except ScoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fields = ["name", "psnr", "ssim"] + [k for k in ("ecc_ok", "saturated") if k in rows[0]]
    out_dir = os.path.dirname(os.path.abspath(csv_path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(csv_path))[0]
    reports.write_rows(out_dir, stem, rows, fields)
    print(summarize(rows, args.protocol, args.ssim, args.label))
    print(f"per-image scores: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
