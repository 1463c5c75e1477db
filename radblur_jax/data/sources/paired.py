"""Paired examples on disk: file records, listing helpers and the grain source that reads them.

A `PairedSource` implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`)
over a list of `PairRecord`s. Listing helpers match files by stem and never guess: a file
without its counterpart is an error naming it (or, with `skip_bad=True`, a warning and a count).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from radblur_jax.data import image_io
from radblur_jax.data.image_io import DataError


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """Paths of one example. `name` identifies it in outputs (e.g. `GOPR0384_11_00/000001.png`)."""
    blur: str
    sharp: str
    name: str
    depth: str | None = None
    mask: str | None = None


def _report(msg: str, skip_bad: bool, bad: list[str]) -> None:
    if not skip_bad:
        raise DataError(msg)
    bad.append(msg)


def by_stem(paths: list[str]) -> dict[str, str]:
    """Maps file stem -> path. Two files with one stem (`x.png`, `x.jpg`) are a DataError
    naming both: matching by stem would have to guess which one is meant."""
    out: dict[str, str] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in out:
            raise DataError(f"{out[stem]} and {path}: two files named {stem!r}; files are "
                            f"matched by stem, keep one")
        out[stem] = path
    return out


def images_by_stem(folder: str) -> dict[str, str]:
    """Maps file stem -> path for the images directly inside `folder` (`image_io.list_images`;
    `by_stem`)."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: directory not found")
    return by_stem(image_io.list_images(folder))


def match_folders(blur_dir: str, sharp_dir: str, prefix: str, bad: list[str], *,
                  skip_bad: bool, depth_dir: str | None = None) -> list[PairRecord]:
    """Pairs the images of two folders by file stem; depth (`.npy`/`.png`/`.pfm`) optional."""
    blur, sharp = images_by_stem(blur_dir), images_by_stem(sharp_dir)
    recs = []
    for stem in sorted(set(blur) | set(sharp)):
        if stem not in sharp:
            _report(f"{blur[stem]}: no sharp counterpart {stem}.* in {sharp_dir}", skip_bad, bad)
            continue
        if stem not in blur:
            _report(f"{sharp[stem]}: no blurred counterpart {stem}.* in {blur_dir}", skip_bad, bad)
            continue
        depth = None
        if depth_dir is not None:
            cands = [os.path.join(depth_dir, stem + e) for e in image_io.DEPTH_EXTS]
            depth = next((c for c in cands if os.path.isfile(c)), None)
            if depth is None:
                _report(f"{blur[stem]}: no depth map {stem}.npy/.png/.pfm in {depth_dir}",
                        skip_bad, bad)
                continue
        recs.append(PairRecord(blur[stem], sharp[stem], prefix + os.path.basename(blur[stem]),
                               depth=depth))
    return recs


def read_pair_list(list_path: str, roots: Sequence[str], bad: list[str], *, skip_bad: bool,
                   sharp_first: bool = True) -> list[PairRecord]:
    """Reads a list file of `sharp_path blur_path` lines (RealBlur/RSBlur style).

    Relative paths resolve against the first of `roots` under which the first entry exists.
    """
    if not os.path.isfile(list_path):
        raise DataError(f"{list_path}: list file not found")
    with open(list_path) as f:
        rows = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    if not rows:
        raise DataError(f"{list_path}: list file is empty")
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise DataError(f"{list_path}:{i + 1}: expected 'sharp_path blur_path', got {r}")
    first = rows[0][0] if sharp_first else rows[0][1]
    base = next((b for b in roots if os.path.isfile(os.path.join(b, first))), None)
    if base is None:
        raise DataError(f"{list_path}: first entry {first} not found under any of {list(roots)}")
    recs = []
    for r in rows:
        s, b = (r[0], r[1]) if sharp_first else (r[1], r[0])
        sp, bp = os.path.join(base, s), os.path.join(base, b)
        missing = [p for p in (bp, sp) if not os.path.isfile(p)]
        if missing:
            _report(f"{missing[0]}: listed in {list_path} but missing", skip_bad, bad)
            continue
        recs.append(PairRecord(bp, sp, b))
    return recs


def require(recs: list[PairRecord], root: str, expected: str) -> list[PairRecord]:
    """Raises when a listing found nothing, naming the root and the layout that was expected."""
    if not recs:
        raise DataError(f"{root}: no image pairs found; expected layout {expected}")
    return recs


class PairedSource:
    """Random-access source of aligned examples (grain `RandomAccessDataSource`).

    `source[i]` is a dict: `blur`, `sharp` `(H, W, 3) float32 in [0, 1]`, optionally
    `depth (H, W, 1) float32` and `mask (H, W, 1) float32`, and `name` (str).
    `raw=True` keeps images in their stored integer type (the pipeline converts after cropping).
    With `skip_bad=True`, an unreadable or inconsistent example is replaced by the next good one
    (deterministically), with a warning; `num_bad` counts them in this process.
    """

    def __init__(self, records: Iterable[PairRecord], *, dataset: str, skip_bad: bool = False,
                 allow_gray: bool = False, raw: bool = False,
                 listing_errors: Sequence[str] = ()):
        self.records = list(records)
        self.dataset = dataset
        self.skip_bad = skip_bad
        self.allow_gray = allow_gray
        self.raw = raw
        self.listing_errors = list(listing_errors)
        self.num_bad = len(self.listing_errors)
        for msg in self.listing_errors:
            warnings.warn(f"{dataset}: skipped: {msg}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"PairedSource({self.dataset}, {len(self)} examples)"

    def read(self, rec: PairRecord) -> dict[str, Any]:
        """Reads and validates one record; raises DataError naming the file."""
        kw = {"allow_gray": self.allow_gray, "raw": self.raw}
        out = {"blur": image_io.read_image(rec.blur, **kw),
               "sharp": image_io.read_image(rec.sharp, **kw)}
        paths = [rec.blur, rec.sharp]
        if rec.depth is not None:
            out["depth"] = image_io.read_depth(rec.depth)[:, :, None]
            paths.append(rec.depth)
        if rec.mask is not None:
            out["mask"] = image_io.read_mask(rec.mask)[:, :, None]
            paths.append(rec.mask)
        image_io.check_same_size(list(out.values()), paths)
        out["name"] = rec.name
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        n = len(self.records)
        for k in range(n):
            rec = self.records[(index + k) % n]
            try:
                return self.read(rec)
            except DataError as e:
                if not self.skip_bad:
                    raise
                self.num_bad += 1
                warnings.warn(f"{self.dataset}: skipped bad example: {e}", stacklevel=2)
        raise DataError(f"{self.dataset}: every example is unreadable")

