"""The training input: global batches independent of the process count, exact resume."""
from __future__ import annotations

import numpy as np
import pytest
from train_helpers import load_config

from radblur_jax.data.synthetic import SyntheticParams, write_dataset
from radblur_jax.train import input as input_lib
from radblur_jax.train.tasks import DeblurTask

FIELDS = DeblurTask.fields


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "set"
    write_dataset(root, 6, 3, SyntheticParams(height=40, width=40), seed=1, frames_per_scene=3)
    c = load_config("deblur.py", "tiny")
    c.data.root = c.eval_data.root = str(root)
    c.input.crop_size, c.train.batch_size, c.input.read_threads = 24, 4, 1
    return c


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_two_processes_read_the_rows_of_the_single_process_batches(config):
    one = _take(input_lib.train_iterator(config, FIELDS, 0, 1), 3)  # 12 draws, 6 pairs: 2 epochs
    halves = [_take(input_lib.train_iterator(config, FIELDS, p, 2), 3) for p in range(2)]
    for k in range(3):
        assert one[k]["blur"].shape == (4, 24, 24, 3) and set(one[k]) == {"blur", "sharp"}
        for key in ("blur", "sharp"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][k][key], halves[1][k][key]]), one[k][key])
    assert not np.array_equal(one[0]["blur"], one[1]["blur"])


def test_iterator_state_resumes_on_the_next_batch(config):
    it = input_lib.train_iterator(config, FIELDS, 0, 1)
    _take(it, 2)
    state = it.get_state()
    want = _take(it, 2)
    it2 = input_lib.train_iterator(config, FIELDS, 0, 1)
    it2.set_state(state)
    for a, b in zip(_take(it2, 2), want):
        np.testing.assert_array_equal(a["sharp"], b["sharp"])


def test_batch_not_divisible_by_processes(config):
    with pytest.raises(ValueError, match="batch_size=4 is not divisible by the 3 processes"):
        input_lib.train_iterator(config, FIELDS, 0, 3)


def test_eval_batches_pad_the_last_batch_and_crop(config):
    config = config.copy_and_resolve_references()
    config.eval.batch_size, config.eval.crop = 2, 30
    batches = list(input_lib.eval_batches(config, FIELDS, multiple=14))
    assert [real for _, real in batches] == [2, 1]
    last, _ = batches[-1]
    assert last["blur"].shape == (2, 28, 28, 3)
    np.testing.assert_array_equal(last["blur"][0], last["blur"][1])
