"""tools/prepare_subimages.py: tile positions, tiles equal the windows of the originals, and
the tiles read back as an aligned paired_folder source."""

import os
import sys

import numpy as np

import test_data_fakes as F
from radblur_jax.data.sources import deblur as S

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import prepare_subimages as T  # noqa: E402  pylint: disable=wrong-import-position


def test_tile_starts():
    assert T.tile_starts(720, 480, 240) == [0, 240]
    assert T.tile_starts(1280, 480, 240) == [0, 240, 480, 720, 800]
    assert T.tile_starts(1280, 480, 240, thresh=100) == [0, 240, 480, 720]
    assert T.tile_starts(48, 64, 32) == [0]


def test_tiles_match_originals_and_read_back(tmp_path):
    root = F.make_synthetic(str(tmp_path / "syn"), scenes=1, frames=2)
    out = str(tmp_path / "tiles")
    n = T.prepare({"name": "synthetic", "root": root, "split": "train"}, out, size=32, step=16)
    assert n == 2 * len(T.tile_starts(F.H, 32, 16)) * len(T.tile_starts(F.W, 32, 16))  # 2*2*3
    tiles = S.paired_folder(out, depth_dir="depth")
    assert len(tiles) == n
    full = S.synthetic(root, "train")[1]
    t = tiles[[r.name for r in tiles.records].index("scene_0000_000001_s004.png")]
    # tile 4 = row start 16, column start 16 (starts [0, 16] x [0, 16, 32])
    for k in ("blur", "sharp", "depth"):
        np.testing.assert_array_equal(t[k], full[k][16:48, 16:48])
    for i in range(len(tiles)):
        F.check_coord_alignment(tiles[i], depth=True)


def test_cli_with_workers(tmp_path):
    root = F.make_gopro(str(tmp_path / "g"), kind="photo",
                        scenes={"train": {"GOPR0001_00_00": 3}})
    out = str(tmp_path / "t")
    T.main(["--dataset", "gopro", "--root", root, "--out", out, "--size", "40", "--step", "20",
            "--workers", "2"])
    assert len(os.listdir(os.path.join(out, "input"))) == 3 * 2 * 3  # rows [0, 8], cols [0, 20, 24]
    assert sorted(os.listdir(os.path.join(out, "input"))) == sorted(
        os.listdir(os.path.join(out, "target")))
