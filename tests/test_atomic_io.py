"""Atomic writes leave the old file or the new one, never a partial file or a temp file."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from radblur_jax.atomic_io import write_atomic, write_bytes_atomic, write_json_atomic


def test_writes_replace_and_keep_suffix(tmp_path):
    path = tmp_path / "a.npy"
    write_atomic(path, lambda tmp: np.save(tmp, np.arange(3)))  # np.save adds no second .npy
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    write_json_atomic(tmp_path / "b.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": [1, 2]}
    write_bytes_atomic(tmp_path / "b.json", b"new")
    assert (tmp_path / "b.json").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.json"]
    mode = os.stat(path).st_mode & 0o777
    assert mode & 0o044, oct(mode)  # not left private like a mkstemp file


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"step": 1})

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write('{"step": 2')  # half written, then the writer fails
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]
