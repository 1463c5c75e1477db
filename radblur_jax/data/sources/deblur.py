"""Paired deblurring sources, one function per dataset layout (see docs/datasets.md).

Every function returns a `paired.PairedSource`; examples are dicts with `blur`, `sharp`
`(H, W, 3) float32 in [0, 1]` (plus `depth`/`mask` where the dataset has them) and `name`.
"""

from __future__ import annotations

import glob
import os

from radblur_jax.data.image_io import DataError
from radblur_jax.data.sources.paired import (
    PairedSource,
    PairRecord,
    images_by_stem,
    match_folders,
    read_pair_list,
    require,
)


def _check_root(root: str, dataset: str) -> str:
    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: {dataset} root directory not found")
    return root


def _check_split(split: str, allowed: tuple[str, ...], dataset: str) -> None:
    if split not in allowed:
        raise ValueError(f"{dataset}: split {split!r} not in {allowed}")


def _subdirs(folder: str) -> list[str]:
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def gopro(root: str, split: str = "train", *, blur_dir: str = "blur",
          skip_bad: bool = False) -> PairedSource:
    """GoPro: `root/{train,test}/GOPRxxxx_xx_xx/{blur,blur_gamma,sharp}/*.png` (original zip,
    `root` = `GOPRO_Large`) or the flattened `root/{train,test}/{input,target}/*.png`.

    `blur_dir` picks `blur` (the benchmark) or `blur_gamma` in the original layout.
    """
    _check_split(split, ("train", "test"), "gopro")
    root = _check_root(root, "gopro")
    if os.path.isdir(os.path.join(root, "GOPRO_Large")):
        root = os.path.join(root, "GOPRO_Large")
    d = os.path.join(root, split)
    bad: list[str] = []
    if os.path.isdir(os.path.join(d, "input")):
        recs = match_folders(os.path.join(d, "input"), os.path.join(d, "target"), "", bad,
                             skip_bad=skip_bad)
    else:
        recs = []
        for scene in _subdirs(d) if os.path.isdir(d) else []:
            s = os.path.join(d, scene)
            recs += match_folders(os.path.join(s, blur_dir), os.path.join(s, "sharp"), scene + "/",
                                  bad, skip_bad=skip_bad)
    require(recs, root,
            f"{split}/GOPRxxxx/{{{blur_dir},sharp}}/*.png or {split}/{{input,target}}/*.png")
    return PairedSource(recs, dataset="gopro", skip_bad=skip_bad, listing_errors=bad)


def hide(root: str, split: str = "test", *, skip_bad: bool = False) -> PairedSource:
    """HIDE. Layouts accepted (first match wins):

    1. flattened: `root/{split}/{input,target}/*.png` or `root/{input,target}/*.png`;
    2. original `HIDE_dataset`: blurred images in `root/{split}/` and its subfolders
       (`test-close-ups/`, `test-long-shot/`), sharp images with the same file name in `root/GT/`.
    """
    _check_split(split, ("train", "test"), "hide")
    root = _check_root(root, "hide")
    bad: list[str] = []
    for d in (os.path.join(root, split), root):
        if os.path.isdir(os.path.join(d, "input")):
            recs = match_folders(os.path.join(d, "input"), os.path.join(d, "target"), "", bad,
                                 skip_bad=skip_bad)
            break
    else:
        gt_dir, blur_root = os.path.join(root, "GT"), os.path.join(root, split)
        if not (os.path.isdir(gt_dir) and os.path.isdir(blur_root)):
            raise DataError(f"{root}: not a HIDE root; expected {split}/{{input,target}}/ or "
                               f"{split}/ plus GT/")
        gt = images_by_stem(gt_dir)
        recs = []
        for sub in [""] + _subdirs(blur_root):
            for stem, path in images_by_stem(os.path.join(blur_root, sub)).items():
                if stem not in gt:
                    msg = f"{path}: no sharp counterpart {stem}.* in {gt_dir}"
                    if not skip_bad:
                        raise DataError(msg)
                    bad.append(msg)
                    continue
                recs.append(PairRecord(path, gt[stem], os.path.join(sub, os.path.basename(path))))
    require(recs, root, f"{split}/{{input,target}}/ or {split}/ + GT/")
    return PairedSource(recs, dataset="hide", skip_bad=skip_bad, listing_errors=bad)


def reds(root: str, split: str = "train", *, jpeg: bool = False,
         skip_bad: bool = False) -> PairedSource:
    """REDS deblurring: `{split}_blur[_jpeg]/NNN/*.{png,jpg}` + `{split}_sharp/NNN/*.png`, directly
    under `root` or under `root/{split}/`. `split="val300"`: validation frames whose name ends
    in 9 (frames 9, 19, ..., 99 of each of the 30 sequences).
    """
    _check_split(split, ("train", "val", "val300"), "reds")
    root = _check_root(root, "reds")
    part = "val" if split == "val300" else split
    blur_name = f"{part}_blur" + ("_jpeg" if jpeg else "")
    base = next((b for b in (root, os.path.join(root, part))
                 if os.path.isdir(os.path.join(b, blur_name))), None)
    if base is None:
        raise DataError(f"{root}: no {blur_name}/ directory (nor {part}/{blur_name}/)")
    bad: list[str] = []
    recs = []
    for seq in _subdirs(os.path.join(base, blur_name)):
        recs += match_folders(os.path.join(base, blur_name, seq),
                              os.path.join(base, f"{part}_sharp", seq), seq + "/", bad,
                              skip_bad=skip_bad)
    if split == "val300":
        recs = [r for r in recs if os.path.splitext(os.path.basename(r.blur))[0].endswith("9")]
    require(recs, root, f"{blur_name}/NNN/*.png + {part}_sharp/NNN/*.png")
    return PairedSource(recs, dataset="reds", skip_bad=skip_bad, listing_errors=bad)


def _find_list(root: str, name: str, list_dir: str | None) -> str:
    dirs = [list_dir] if list_dir else [
        os.path.join(b, *sub) for b in (root, os.path.dirname(root))
        for sub in ((), ("datalist",), ("datalist", "RSBlur"))]
    for d in dirs:
        if os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    raise DataError(f"{root}: list file {name} not found in {dirs}")


def realblur(root: str, variant: str = "J", split: str = "train", *,
             list_dir: str | None = None, skip_bad: bool = False) -> PairedSource:
    """RealBlur-J/-R from the official lists `RealBlur_{J,R}_{train,test}_list.txt`
    (lines `gt_path blur_path`, relative to the folder holding
    `RealBlur-J_ECC_IMCORR_centroid_itensity_ref/`). The list is looked up in `root`,
    `root/datalist` or `list_dir`.
    """
    if variant not in ("J", "R"):
        raise ValueError(f"realblur: variant {variant!r} not in ('J', 'R')")
    _check_split(split, ("train", "test"), "realblur")
    root = _check_root(root, "realblur")
    lst = _find_list(root, f"RealBlur_{variant}_{split}_list.txt", list_dir)
    bad: list[str] = []
    recs = read_pair_list(lst, [root, os.path.dirname(lst), os.path.dirname(root)], bad,
                          skip_bad=skip_bad)
    require(recs, lst, "gt_path blur_path lines")
    return PairedSource(recs, dataset=f"realblur_{variant.lower()}", skip_bad=skip_bad,
                        listing_errors=bad)


def rsblur(root: str, split: str = "train", *, variant: str = "real", subset: str = "all",
           with_mask: bool = False, list_dir: str | None = None,
           skip_bad: bool = False) -> PairedSource:
    """RSBlur from its datalists `RSBlur_{real,syn}_{train,val,test}.txt` (lines
    `RSBlur/0001/000022/gt/gt_sharp.png RSBlur/0001/000022/real_blur/real_blur.png`).

    `variant`: `real` (real_blur) or `syn` (synthetic averaged frames, train only).
    `subset` (test): `all`, `saturation` or `non_saturation` (the official split lists).
    `with_mask`: adds `mask (H, W, 1)` from the first image in `<pair>/avg65_mask_100/`.
    """
    if variant not in ("real", "syn"):
        raise ValueError(f"rsblur: variant {variant!r} not in ('real', 'syn')")
    if subset not in ("all", "saturation", "non_saturation"):
        raise ValueError(f"rsblur: subset {subset!r} invalid")
    _check_split(split, ("train", "val", "test"), "rsblur")
    root = _check_root(root, "rsblur")
    suffix = "" if subset == "all" else f"_{subset}"
    lst = _find_list(root, f"RSBlur_{variant}_{split}{suffix}.txt", list_dir)
    bad: list[str] = []
    recs = read_pair_list(lst, [os.path.dirname(root), root, os.path.dirname(lst)], bad,
                          skip_bad=skip_bad)
    if with_mask:
        out = []
        for r in recs:
            pair_dir = os.path.dirname(os.path.dirname(r.sharp))
            masks = sorted(glob.glob(os.path.join(pair_dir, "avg65_mask_100", "*.png")))
            if not masks:
                msg = f"{pair_dir}/avg65_mask_100/: no saturation mask for {r.blur}"
                if not skip_bad:
                    raise DataError(msg)
                bad.append(msg)
                continue
            out.append(PairRecord(r.blur, r.sharp, r.name, mask=masks[0]))
        recs = out
    require(recs, lst, "gt_path blur_path lines")
    return PairedSource(recs, dataset="rsblur", skip_bad=skip_bad, listing_errors=bad)


def paired_folder(root: str, *, input_dir: str = "input", target_dir: str = "target",
                  depth_dir: str | None = None, list_file: str | None = None,
                  sharp_first: bool = True, allow_gray: bool = False,
                  skip_bad: bool = False) -> PairedSource:
    """Any paired set: `root/{input_dir,target_dir}/` matched by file stem (optional
    `root/{depth_dir}/<stem>.npy|png|pfm`, e.g. tiles of the synthetic set), or a list file of
    `sharp blur` lines (`sharp_first=False` for `blur sharp`) relative to `root`.
    `allow_gray=True` accepts grayscale files (repeated to 3 channels).
    """
    root = _check_root(root, "paired_folder")
    bad: list[str] = []
    if list_file is not None:
        lst = list_file if os.path.isabs(list_file) else os.path.join(root, list_file)
        recs = read_pair_list(lst, [root, os.path.dirname(lst)], bad, skip_bad=skip_bad,
                              sharp_first=sharp_first)
    else:
        recs = match_folders(os.path.join(root, input_dir), os.path.join(root, target_dir), "",
                             bad, skip_bad=skip_bad,
                             depth_dir=os.path.join(root, depth_dir) if depth_dir else None)
    require(recs, root, f"{input_dir}/*.png + {target_dir}/*.png")
    return PairedSource(recs, dataset="paired_folder", skip_bad=skip_bad, allow_gray=allow_gray,
                        listing_errors=bad)


def synthetic(root: str, split: str = "train", *, with_depth: bool = True,
              skip_bad: bool = False) -> PairedSource:
    """The built-in synthetic set: `root/{split}/<scene>/{blur,sharp}/NNNNNN.png` and
    `depth/NNNNNN.npy` (float32 depth of the sharp frame, larger = farther).
    """
    _check_split(split, ("train", "test"), "synthetic")
    root = _check_root(root, "synthetic")
    d = os.path.join(root, split)
    bad: list[str] = []
    recs = []
    for scene in _subdirs(d) if os.path.isdir(d) else []:
        s = os.path.join(d, scene)
        recs += match_folders(os.path.join(s, "blur"), os.path.join(s, "sharp"), scene + "/", bad,
                              skip_bad=skip_bad,
                              depth_dir=os.path.join(s, "depth") if with_depth else None)
    require(recs, root, f"{split}/<scene>/{{blur,sharp,depth}}/")
    return PairedSource(recs, dataset="synthetic", skip_bad=skip_bad, listing_errors=bad)
