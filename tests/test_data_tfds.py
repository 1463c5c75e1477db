"""TFDS builders: build the synthetic set and a fake GoPro tree as ArrayRecord into a temp
data_dir, read them back with tfds.data_source through the grain pipeline."""

import numpy as np
import pytest
import test_data_fakes as F

from radblur_jax.data import image_io, tfds_builders
from radblur_jax.data import pipeline as P
from radblur_jax.data.sources import make_source
from radblur_jax.data.synthetic import SyntheticParams, writer


def test_build_synthetic_and_read_with_grain(tmp_path):
    root = F.make_synthetic(str(tmp_path / "syn"), scenes=2, frames=3)
    data_dir = str(tmp_path / "tfds")
    tfds_builders.build("radblur_synthetic", root, data_dir)
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    src = make_source({"name": "synthetic", "format": "tfds", "data_dir": data_dir})
    files = make_source({"name": "synthetic", "root": root})
    assert len(src) == len(files) == 6
    by_name = {files[i]["name"]: files[i] for i in range(len(files))}
    for i in range(len(src)):
        ex = src[i]
        ref = by_name[ex["name"]]
        for k in ("blur", "sharp", "depth"):
            np.testing.assert_array_equal(ex[k], ref[k])
    batch = next(iter(P.train_dataset(src, batch_size=2, crop_size=16, seed=0, shard_index=0,
                                      shard_count=1)))
    for j in range(2):
        F.check_coord_alignment({k: v[j] for k, v in batch.items()}, depth=True)


def test_build_gopro_from_fake_tree(tmp_path):
    root = F.make_gopro(str(tmp_path / "GOPRO_Large"))
    data_dir = str(tmp_path / "tfds")
    builder = tfds_builders.build("radblur_gopro", root, data_dir)
    assert builder.info.splits["train"].num_examples == 5
    assert "GOPRO_Large" in tfds_builders.RadblurGopro.MANUAL_DOWNLOAD_INSTRUCTIONS
    src = make_source({"name": "gopro", "format": "tfds", "data_dir": data_dir, "split": "test"})
    assert sorted(src[i]["name"] for i in range(len(src))) == [
        "GOPR0384_11_00/000001.png", "GOPR0384_11_00/000002.png"]
    ev = P.eval_dataset(src, shard_index=0, shard_count=1)
    F.check_coord_alignment(ev[0])
    raw = make_source({"name": "gopro", "format": "tfds", "root": data_dir, "raw": True})
    assert raw[0]["blur"].dtype == np.uint8 and len(raw) == 5


def test_missing_tfds_dataset_message(tmp_path):
    with pytest.raises(image_io.DataError,
                       match="radblur_gopro' not found; prepare it as ArrayRecord with"):
        make_source({"name": "gopro", "format": "tfds", "data_dir": str(tmp_path)})


def test_real_synthetic_generator_output(tmp_path):
    """The synthetic engineer's writer output reads through the file source and the TFDS build."""
    root = str(tmp_path / "syn")
    writer.write_dataset(root, 3, 2, SyntheticParams(height=40, width=48), seed=0,
                         frames_per_scene=2)
    files = make_source({"name": "synthetic", "root": root})
    assert len(files) == 3 and files[0]["depth"].shape == (40, 48, 1)
    tfds_builders.build("radblur_synthetic", root, str(tmp_path / "tfds"))
    src = make_source({"name": "synthetic", "format": "tfds", "data_dir": str(tmp_path / "tfds"),
                       "split": "test"})
    ref = {e["name"]: e for e in (make_source({"name": "synthetic", "root": root,
                                               "split": "test"})[i] for i in range(2))}
    for i in range(len(src)):
        np.testing.assert_array_equal(src[i]["depth"], ref[src[i]["name"]]["depth"])
        np.testing.assert_array_equal(src[i]["sharp"], ref[src[i]["name"]]["sharp"])


def test_cli_builds(tmp_path, capsys):
    root = F.make_gopro(str(tmp_path / "GOPRO_Large"), scenes={"train": {"GOPR0001_00_00": 2},
                                                             "test": {"GOPR0002_00_00": 1}})
    tfds_builders.main(["radblur_gopro", "--manual_dir", root, "--data_dir",
                        str(tmp_path / "tfds")])
    assert "radblur_gopro" in capsys.readouterr().out
    assert len(make_source({"name": "gopro", "format": "tfds", "split": "test",
                            "data_dir": str(tmp_path / "tfds")})) == 1
