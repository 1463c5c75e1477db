"""tools/prepare_subimages.py: tile positions, tiles equal the windows of the originals, and
the tiles read back as an aligned paired_folder source."""

import os
import subprocess
import sys

import numpy as np
import pytest
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


def test_existing_output_refused_and_failure_leaves_nothing(tmp_path, monkeypatch):
    root = F.make_synthetic(str(tmp_path / "syn"), scenes=1, frames=2)
    cfg = {"name": "synthetic", "root": root, "split": "train"}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="full: already exists"):
        T.prepare(cfg, str(tmp_path / "full"), size=32, step=16)
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    calls = []

    def fail_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args)

    real = T.cut_example
    monkeypatch.setattr(T, "cut_example", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        T.prepare(cfg, str(tmp_path / "tiles"), size=32, step=16)
    assert sorted(os.listdir(tmp_path)) == ["full", "syn"]  # no tiles folder, no temp folder


@pytest.mark.parametrize("args, words", [
    (["--dataset", "nope"], "argument --dataset: invalid choice: 'nope'"),
    (["--dataset", "depth_folder"], "argument --dataset: invalid choice"),
    (["--size", "0"], "argument --size: must be >= 1, got 0"),
    (["--step", "-1"], "argument --step: must be >= 1, got -1"),
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--split", "foo"], "gopro: split 'foo' not in"),
    (["--root", "NOPE"], "NOPE: gopro root directory not found"),
])
def test_cli_bad_arguments(tmp_path, args, words):
    root = F.make_gopro(str(tmp_path / "g"), kind="photo",
                        scenes={"train": {"GOPR0001_00_00": 1}})
    base = {"--dataset": "gopro", "--root": root, "--out": str(tmp_path / "t")}
    base.update(dict(zip(args[::2], args[1::2])))
    if base["--root"] == "NOPE":
        base["--root"] = str(tmp_path / "NOPE")
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "..", "tools",
                                        "prepare_subimages.py")]
    cmd += [x for kv in base.items() for x in kv]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("prepare_subimages.py: error: ") and words in last
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["g"]
