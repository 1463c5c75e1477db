"""Training/eval pipelines: aligned augmentation (by content), determinism, sharding, and
restoring a saved iterator state."""

import itertools
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import test_data_fakes as F

from radblur_jax.data import image_io
from radblur_jax.data import pipeline as P
from radblur_jax.data.sources import deblur as S


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return S.synthetic(F.make_synthetic(str(tmp_path_factory.mktemp("syn")), scenes=2, frames=4))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def _unbatch(batch):
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def test_augment_keeps_blur_sharp_depth_aligned(synth):
    ds = P.train_dataset(synth, batch_size=4, crop_size=24, seed=3, shard_index=0, shard_count=1)
    seen = set()
    for batch in _take(iter(ds), 12):
        assert batch["blur"].shape == (4, 24, 24, 3) and batch["depth"].shape == (4, 24, 24, 1)
        for ex in _unbatch(batch):
            F.check_coord_alignment(ex, depth=True)
            s = np.rint(ex["sharp"] * 255)
            # orientation: (row, col) steps along the crop's two axes
            seen.add(tuple(s[1, 0, :2] - s[0, 0, :2]) + tuple(s[0, 1, :2] - s[0, 0, :2]))
    assert len(seen) == 8  # all flips x rotations occur


def test_augment_without_crop_and_rect_crop(synth):
    aug = P.PairedAugment(crop_size=None, rot90=False)
    ex = aug.random_map(dict(synth[0]), np.random.default_rng(0))
    assert ex["blur"].shape == (F.H, F.W, 3)
    F.check_coord_alignment(ex, depth=True)
    with pytest.raises(ValueError, match="square"):
        P.PairedAugment(crop_size=(16, 32))
    with pytest.raises(image_io.DataError, match="smaller than crop"):
        P.PairedAugment((64, 64)).random_map(dict(synth[0]), np.random.default_rng(0))


def test_raw_source_converted_after_crop(synth):
    raw = S.synthetic(synth.records[0].blur.split("/train/")[0], "train")
    raw.raw = True
    a = _take(iter(P.train_dataset(raw, batch_size=2, crop_size=16, seed=1,
                                   shard_index=0, shard_count=1)), 3)
    b = _take(iter(P.train_dataset(synth, batch_size=2, crop_size=16, seed=1,
                                   shard_index=0, shard_count=1)), 3)
    _assert_same(a, b)


def test_seeded_determinism(synth):
    mk = lambda seed: iter(P.train_dataset(synth, batch_size=3, crop_size=16, seed=seed,
                                           shard_index=0, shard_count=1, read_threads=2))
    _assert_same(_take(mk(7), 5), _take(mk(7), 5))
    assert not np.array_equal(next(mk(7))["sharp"], next(mk(8))["sharp"])


def test_epochs_reshuffle_and_cover(synth):
    ds = P.train_dataset(synth, batch_size=1, crop_size=None, rot90=False, hflip=False,
                         vflip=False, seed=0, num_epochs=2, keep_names=True, shard_index=0,
                         shard_count=1)
    names = [str(b["name"][0]) for b in ds]
    n = len(synth)
    assert sorted(names[:n]) == sorted(names[n:]) == sorted(r.name for r in synth.records)
    assert names[:n] != names[n:]


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_two_process_shards_disjoint_and_cover(synth, drop_remainder):
    per = []
    for i in range(2):
        ds = P.train_dataset(synth, batch_size=1, crop_size=None, rot90=False, seed=0,
                             num_epochs=1, keep_names=True, shard_index=i, shard_count=2,
                             drop_remainder=drop_remainder)
        per.append({str(b["name"][0]) for b in ds})
    assert not per[0] & per[1]
    assert per[0] | per[1] == {r.name for r in synth.records}
    ev = [{e["name"] for e in P.eval_dataset(synth, shard_index=i, shard_count=2)}
          for i in range(2)]
    assert not ev[0] & ev[1] and ev[0] | ev[1] == {r.name for r in synth.records}


def test_shard_by_jax_process_default(synth):
    ds = P.train_dataset(synth, batch_size=2, crop_size=16, seed=0)  # 1 process: whole set
    assert next(iter(ds))["blur"].shape == (2, 16, 16, 3)
    opts = grain.sharding.ShardOptions(shard_index=1, shard_count=3)
    assert len(P.eval_dataset(synth, shard_options=opts)) == len(range(1, len(synth), 3))


def test_eval_dataset_full_images_in_order(synth):
    ev = P.eval_dataset(synth, shard_index=0, shard_count=1)
    assert len(ev) == len(synth)
    for i, ex in enumerate(ev):
        assert ex["name"] == synth.records[i].name and ex["blur"].shape == (F.H, F.W, 3)
        F.check_coord_alignment(ex, depth=True)


@pytest.mark.slow
def test_workers_match_single_process_and_restore(synth):
    """The one test with worker processes: 2 workers give the same batches as 0, and a state
    saved from a multi-worker iterator restores onto the next batches."""
    mk = lambda w: P.train_dataset(synth, batch_size=2, crop_size=16, seed=11, shard_index=0,
                                   shard_count=1, worker_count=w)
    ref = _take(iter(mk(0)), 8)
    it = iter(mk(2))
    got = _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what grain's checkpoint handler writes
    _assert_same(got, ref[:3])
    fresh = iter(mk(2))
    fresh.set_state(state)
    _assert_same(_take(fresh, 5), ref[3:])
    for b in itertools.chain(got):
        for ex in _unbatch(b):
            F.check_coord_alignment(ex, depth=True)


def test_orbax_checkpoint_of_iterator_gives_exact_next_batches(synth, tmp_path):
    """MaxText-style: the grain iterator as one item of an orbax CheckpointManager, through grain's
    own handler (`grain.checkpoint.CheckpointSave/CheckpointRestore`); resumes on the exact next
    batches, across an epoch boundary (8 examples, batches of 3)."""
    mk = lambda: iter(P.train_dataset(synth, batch_size=3, crop_size=16, seed=5, shard_index=0,
                                      shard_count=1))
    ref = _take(mk(), 9)
    it = mk()
    _take(it, 4)
    mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    mngr.save(4, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    _take(it, 2)  # advancing after the save must not matter
    fresh = mk()
    ocp.CheckpointManager(str(tmp_path / "ckpt")).restore(
        4, args=ocp.args.Composite(iter=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same(_take(fresh, 5), ref[4:])


_TWO_PROCESS_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", num_processes=2, process_id=int(sys.argv[2]))
from radblur_jax.data import pipeline as P
from radblur_jax.data.sources import deblur as S
src = S.synthetic(sys.argv[3])
train = P.train_dataset(src, batch_size=1, crop_size=None, rot90=False, seed=0, num_epochs=1,
                        keep_names=True)  # default: grain.sharding.ShardByJaxProcess
out = {"process": jax.process_index(), "train": [str(b["name"][0]) for b in train],
       "eval": [e["name"] for e in P.eval_dataset(src)]}
json.dump(out, open(sys.argv[4], "w"))
"""


@pytest.mark.slow
def test_two_jax_processes_shard_by_process(synth, tmp_path):
    """Two real JAX processes (CPU, gloo): default sharding gives disjoint shards that cover
    the set."""
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = synth.records[0].blur.split("/train/")[0]
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), root,
                               str(tmp_path / f"out{i}.json")]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    outs = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
    assert [o["process"] for o in outs] == [0, 1]
    everything = {r.name for r in synth.records}
    for key in ("train", "eval"):
        a, b = set(outs[0][key]), set(outs[1][key])
        assert not a & b and a | b == everything, key


_WORKERS_AT_EXIT_SCRIPT = r"""
import sys
import numpy as np
from radblur_jax.data import pipeline as P
from radblur_jax.data.sources import deblur as S

if __name__ == "__main__":  # grain starts spawn workers: the guard is grain's requirement
    it = iter(P.train_dataset(S.synthetic(sys.argv[1]), batch_size=2, crop_size=16, seed=0,
                              worker_count=2))
    batch = next(it)  # iterator and batch left alive at module level, never closed
    assert type(batch["blur"]) is np.ndarray and batch["blur"].shape == (2, 16, 16, 3)
    if sys.argv[2] == "close":
        it.close()
    print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["left_open", "close"])
def test_worker_pipeline_exits_quietly(synth, tmp_path, how):
    """A worker pipeline alive at exit (grain 0.2.18 alone prints SharedMemoryArray.__del__ and
    DatasetIterator.__del__ tracebacks and leaks shared memory there): stderr stays empty."""
    import subprocess
    import sys
    root = synth.records[0].blur.split("/train/")[0]
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_AT_EXIT_SCRIPT)
    result = subprocess.run([sys.executable, str(script), root, how], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
    assert result.stderr == ""


def test_rgbd_source_crops_aligned(tmp_path):
    root = str(tmp_path)
    for i in range(3):
        F.write_rgb(f"{root}/image/{i}.png", F.coord_pair(i)[1])
        (tmp_path / "depth").mkdir(exist_ok=True)
        np.save(f"{root}/depth/{i}.npy", F.coord_depth(i))
    from radblur_jax.data.sources import make_source  # pylint: disable=import-outside-toplevel
    src = make_source({"name": "depth_folder", "root": root})
    batch = next(iter(P.train_dataset(src, batch_size=3, crop_size=20, seed=2, shard_index=0,
                                      shard_count=1)))
    assert batch["valid"].shape == (3, 20, 20, 1)
    for ex in _unbatch(batch):
        s = np.rint(ex["image"] * 255)
        expect = 1000.0 * s[..., 2] + 100.0 * s[..., 0] + s[..., 1] + 1.0
        np.testing.assert_array_equal(ex["depth"][..., 0], expect)
