"""Sources on fake trees in each real layout: counts, names, pairing by content, factory."""

import os

import cv2
import numpy as np
import pytest
import test_data_fakes as F

from radblur_jax.data.image_io import DataError
from radblur_jax.data.sources import DEPTH_NAMES, NAMES, make_source
from radblur_jax.data.sources import deblur as S


def _all_aligned(src, depth=False):
    for i in range(len(src)):
        F.check_coord_alignment(src[i], depth=depth)


@pytest.mark.parametrize("flat", [False, True])
def test_gopro_layouts(tmp_path, flat):
    root = F.make_gopro(str(tmp_path / "GOPRO_Large"), flat=flat)
    train, test = S.gopro(root, "train"), S.gopro(root, "test")
    assert (len(train), len(test)) == (5, 2)
    _all_aligned(train)
    ex = train[0]
    assert ex["blur"].dtype == np.float32 and ex["blur"].shape == (F.H, F.W, 3)
    assert ex["name"] == ("GOPR0372_07_00-000001.png" if flat else "GOPR0372_07_00/000001.png")
    if not flat:
        assert len(S.gopro(str(tmp_path), "train", blur_dir="blur_gamma")) == 5  # parent dir ok


@pytest.mark.parametrize("original", [True, False])
def test_hide_layouts(tmp_path, original):
    src = S.hide(F.make_hide(str(tmp_path / "HIDE"), original=original))
    assert len(src) == 5
    _all_aligned(src)


def test_reds_and_val300(tmp_path):
    root = F.make_reds(str(tmp_path / "REDS"), seqs=2, frames=100)
    assert len(S.reds(root, "train")) == 200 and len(S.reds(root, "val")) == 200
    v300 = S.reds(root, "val300")  # 10 per 100-frame sequence: 300 for the 30 REDS sequences
    assert [r.name for r in v300.records] == [
        f"{q:03d}/{f:08d}.png" for q in range(2) for f in range(9, 100, 10)]
    _all_aligned(v300)


def test_reds_jpeg(tmp_path):
    root = F.make_reds(str(tmp_path / "REDS"), seqs=1, frames=3, jpeg=True)
    src = S.reds(root, "train", jpeg=True)
    assert len(src) == 3 and src.records[0].blur.endswith(".jpg")


@pytest.mark.parametrize("variant", ["J", "R"])
def test_realblur_lists(tmp_path, variant):
    root = F.make_realblur(str(tmp_path), variant)
    train = S.realblur(root, variant, "train")
    assert (len(train), len(S.realblur(root, variant, "test"))) == (4, 2)
    lines = open(f"{root}/RealBlur_{variant}_train_list.txt").read().split()
    assert train.records[0].sharp.endswith(lines[0]) and train.records[0].blur.endswith(lines[1])
    _all_aligned(train)


def test_rsblur(tmp_path):
    root = F.make_rsblur(str(tmp_path))
    rs = str(tmp_path / "RSBlur")
    assert [len(S.rsblur(rs, s)) for s in ("train", "val", "test")] == [3, 1, 2]
    assert len(S.rsblur(rs, "test", subset="saturation")) == 1
    src = S.rsblur(rs, "train", with_mask=True)
    ex = src[0]
    assert ex["mask"].shape == (F.H, F.W, 1) and ex["mask"][0, 0, 0] == 1.0
    assert ex["mask"][-1, 0, 0] == 0.0
    _all_aligned(S.rsblur(root, "test"))
    with pytest.raises(DataError, match="RSBlur_syn_train.txt not found"):
        S.rsblur(rs, "train", variant="syn")


def test_paired_folder_dirs_and_list(tmp_path):
    root = str(tmp_path)
    for i in range(3):
        b, s = F.coord_pair(i)
        F.write_rgb(f"{root}/input/{i}.png", b)
        F.write_rgb(f"{root}/target/{i}.png", s)
    assert len(S.paired_folder(root)) == 3
    with open(f"{root}/pairs.txt", "w") as f:
        f.write("input/0.png target/0.png\ninput/2.png target/2.png\n")
    src = S.paired_folder(root, list_file="pairs.txt", sharp_first=False)
    assert len(src) == 2
    _all_aligned(src)


def test_synthetic_with_depth(tmp_path):
    root = F.make_synthetic(str(tmp_path))
    src = S.synthetic(root, "train")
    assert len(src) == 6 and src[0]["depth"].shape == (F.H, F.W, 1)
    _all_aligned(src, depth=True)


def test_depth_sources(tmp_path):
    root = str(tmp_path)
    for i, ext in enumerate(("npy", "pfm")):
        F.write_rgb(f"{root}/image/{i}.png", F.photo(i))
        d = F.coord_depth(i)
        os.makedirs(f"{root}/depth", exist_ok=True)
        np.save(f"{root}/depth/{i}.npy", d) if ext == "npy" else cv2.imwrite(
            f"{root}/depth/{i}.pfm", d.astype(np.float32))
    src = make_source({"name": "depth_folder", "root": root})
    assert len(src) == 2
    np.testing.assert_array_equal(src[1]["depth"][..., 0], F.coord_depth(1))
    assert src[0]["valid"].min() == 1.0
    syn = make_source({"name": "synthetic_depth", "root": F.make_synthetic(str(tmp_path / "s"))})
    assert syn[0]["image"].shape == (F.H, F.W, 3) and syn[0]["depth"].shape == (F.H, F.W, 1)


def test_nyu_missing_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"nyu_depth_v2.*not found.*tfds_builders nyu_depth_v2"):
        make_source({"name": "nyu_depth_v2", "data_dir": str(tmp_path)})


def test_make_source_every_name(tmp_path):
    roots = {"gopro": F.make_gopro(str(tmp_path / "g")), "hide": F.make_hide(str(tmp_path / "h")),
             "reds": F.make_reds(str(tmp_path / "r"), 1, 10),
             "rsblur": F.make_rsblur(str(tmp_path / "rs")) + "/RSBlur",
             "realblur_j": F.make_realblur(str(tmp_path / "j"), "J"),
             "realblur_r": F.make_realblur(str(tmp_path / "rr"), "R"),
             "paired_folder": F.make_hide(str(tmp_path / "p"), original=False) + "/test",
             "synthetic": F.make_synthetic(str(tmp_path / "s"))}
    for name, root in roots.items():
        src = make_source({"name": name, "root": root, "raw": True})
        assert len(src) > 0 and src[0]["blur"].dtype == np.uint8, name
    assert set(roots) | set(DEPTH_NAMES) == set(NAMES)
    with pytest.raises(ValueError, match="unknown dataset"):
        make_source({"name": "gopr0", "root": "x"})


def test_spec_options_reach_the_dataset_only_when_set(tmp_path):
    """A config's dataset spec declares every option (`dataset_spec`): unset ones leave the
    dataset's defaults, a set one reaches it, and one the dataset does not take is named."""
    from radblur_jax.data.sources import dataset_spec
    F.make_rsblur(str(tmp_path))
    spec = dataset_spec("rsblur", root=str(tmp_path / "RSBlur"), split="test")
    assert len(make_source(spec)) == 2
    assert len(make_source({**spec, "subset": "saturation"})) == 1
    with pytest.raises(ValueError, match="'rsblur' takes no option 'jpeg'"):
        make_source({**spec, "jpeg": True})
    with pytest.raises(ValueError, match="'rsblur' takes no option 'depth_scale'"):
        make_source({**spec, "depth_scale": 1e-3})  # depth_folder's: 16-bit PNG depth in mm


def test_two_files_with_one_stem_are_named(tmp_path):
    """Pairing by file stem never guesses between `x.png` and `x.jpg` (or `d.npy`, `d.png`)."""
    root = F.make_gopro(str(tmp_path / "g"), flat=True)
    target = os.path.join(root, "train", "target")
    first = sorted(os.listdir(target))[0]
    stem = os.path.splitext(first)[0]
    cv2.imwrite(os.path.join(target, stem + ".jpg"), cv2.imread(os.path.join(target, first)))
    with pytest.raises(DataError, match=f"two files named '{stem}'"):
        make_source({"name": "paired_folder", "root": os.path.join(root, "train")})
    droot = tmp_path / "d"
    (droot / "image").mkdir(parents=True)
    (droot / "depth").mkdir()
    cv2.imwrite(str(droot / "image" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    np.save(droot / "depth" / "a.npy", np.ones((4, 4), np.float32))
    cv2.imwrite(str(droot / "depth" / "a.png"), np.ones((4, 4), np.uint16))
    with pytest.raises(DataError, match="two files named 'a'"):
        make_source({"name": "depth_folder", "root": str(droot)})
