"""Bad input: clear errors naming the file, or with skip_bad a warning and a count; never a
silently misaligned pair."""

import os

import cv2
import numpy as np
import pytest
import test_data_fakes as F

from radblur_jax.data.image_io import DataError
from radblur_jax.data.sources import deblur as S


@pytest.fixture
def gopro(tmp_path):
    return F.make_gopro(str(tmp_path / "GOPRO_Large"),
                        scenes={"train": {"GOPR0001_00_00": 4}})


def _scene(root):
    return f"{root}/train/GOPR0001_00_00"


def test_missing_counterpart(gopro):
    os.remove(f"{_scene(gopro)}/sharp/000002.png")
    with pytest.raises(DataError, match=r"blur/000002.png: no sharp counterpart"):
        S.gopro(gopro, "train")
    with pytest.warns(UserWarning, match="000002.png"):
        src = S.gopro(gopro, "train", skip_bad=True)
    assert len(src) == 3 and src.num_bad == 1
    # the remaining pairs are still the right ones
    for i in range(3):
        F.check_coord_alignment(src[i])
    os.remove(f"{_scene(gopro)}/blur/000002.png")
    os.remove(f"{_scene(gopro)}/blur/000003.png")
    with pytest.raises(DataError, match=r"sharp/000003.png: no blurred counterpart"):
        S.gopro(gopro, "train")


def test_size_mismatch(gopro):
    F.write_rgb(f"{_scene(gopro)}/sharp/000003.png", F.coord_pair(2, 40, 64)[1])
    src = S.gopro(gopro, "train")
    with pytest.raises(DataError, match=r"size mismatch.*blur/000003.png 48x64.*"
                       r"sharp/000003.png 40x64"):
        src[2]
    skip = S.gopro(gopro, "train", skip_bad=True)
    with pytest.warns(UserWarning, match="000003.png"):
        ex = skip[2]
    assert ex["name"].endswith("000004.png") and skip.num_bad == 1
    F.check_coord_alignment(ex)


def test_corrupt_png(gopro):
    p = f"{_scene(gopro)}/blur/000001.png"
    data = open(p, "rb").read()
    open(p, "wb").write(data[:100])
    with pytest.raises(DataError, match="blur/000001.png: cannot decode"):
        S.gopro(gopro, "train")[0]


def test_grayscale_rgba_16bit_in_pairs(gopro):
    sc = _scene(gopro)
    cv2.imwrite(f"{sc}/blur/000001.png", F.photo(0)[..., 0].copy())
    src = S.gopro(gopro, "train")
    with pytest.raises(DataError, match="blur/000001.png: grayscale"):
        src[0]
    b, s = F.coord_pair(1)
    bgra = np.concatenate([b[..., ::-1], np.full((F.H, F.W, 1), 128, np.uint8)], -1)
    cv2.imwrite(f"{sc}/blur/000002.png", bgra)
    with pytest.raises(DataError, match="blur/000002.png: RGBA"):
        src[1]
    b, s = F.coord_pair(2)
    cv2.imwrite(f"{sc}/blur/000003.png", (b[..., ::-1].astype(np.uint16) * 257))
    cv2.imwrite(f"{sc}/sharp/000003.png", (s[..., ::-1].astype(np.uint16) * 257))
    F.check_coord_alignment(src[2])  # 16-bit pair: same values as the 8-bit one


def test_empty_and_wrong_roots(tmp_path):
    with pytest.raises(DataError, match="nowhere: gopro root directory not found"):
        S.gopro(str(tmp_path / "nowhere"))
    os.makedirs(tmp_path / "empty" / "train")
    with pytest.raises(DataError, match="empty: no image pairs found; expected layout"):
        S.gopro(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="not a HIDE root"):
        S.hide(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no train_blur/ directory"):
        S.reds(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="RealBlur_J_train_list.txt not found"):
        S.realblur(str(tmp_path / "empty"))


def test_list_file_with_missing_entry(tmp_path):
    root = F.make_realblur(str(tmp_path), "J")
    lst = f"{root}/RealBlur_J_train_list.txt"
    lines = open(lst).read().splitlines()
    os.remove(os.path.join(root, lines[1].split()[1]))
    with pytest.raises(DataError, match=r"blur_2.png: listed in .*RealBlur_J_train_list.txt"):
        S.realblur(root, "J", "train")
    with pytest.warns(UserWarning):
        src = S.realblur(root, "J", "train", skip_bad=True)
    assert len(src) == 3 and src.num_bad == 1


def test_paired_folder_accepts_grayscale_only_when_asked(tmp_path):
    root = str(tmp_path)
    b, s = F.photo_pair(0)
    for d, img in (("input", b), ("target", s)):
        os.makedirs(f"{root}/{d}")
        cv2.imwrite(f"{root}/{d}/0.png", img[..., 0].copy())
    with pytest.raises(DataError, match="input/0.png: grayscale"):
        S.paired_folder(root)[0]
    ex = S.paired_folder(root, allow_gray=True)[0]
    assert ex["blur"].shape == (F.H, F.W, 3)
    np.testing.assert_array_equal(ex["sharp"][..., 1], s[..., 0] / np.float32(255))
