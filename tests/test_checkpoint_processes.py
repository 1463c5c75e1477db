"""Checkpoints of a state sharded across two processes (`jax.distributed` on 127.0.0.1).

A TPU pod shards the large params and their moments over `fsdp` across hosts: each process
holds and writes only its own shards. Two local processes (one CPU device each, mesh data=1 x
fsdp=2, the recipes' sharding rules) save three checkpoints with `Checkpoints`, each step also
as the best so far, as an evaluation step does (the best save runs while the periodic one
finalises in the background: the race their barriers once lost); the latest is damaged, and a
restart restores: the damaged step is set aside (process 0 moves it, every process waits),
step 2 comes back onto the fsdp shards and onto a replicated mesh (a resume on another
topology), each process's grain iterator resumes where it was, and each process reads the
best EMA params whole (stage B's init from a stage-A workdir on a pod). The test then reads the
workdir in its own single process: the step-2 state with orbax alone, and the params
inference loads from the periodic and the best checkpoint, all as whole arrays, so both
processes' shards were written. No training step is compiled; the training loop across
processes is `test_train_loop.py`'s (data-parallel there, params replicated).
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np
from conftest import free_port, processes_report, run_processes
from train_helpers import read_state

from radblur_jax.workdir import load_params_for_inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Leaves named like the train state's, so the recipes' rules shard them: kernels and moments
# over fsdp, a LayerNorm scale replicated.
SHAPES = {f"{tree}/decoder/{leaf}": shape
          for tree in ("params", "ema_params", "opt_state/mu")
          for leaf, shape in (("conv/kernel", (96, 64)), ("norm/scale", (64,)))}


def flat_state_at(step: int) -> dict[str, np.ndarray]:
    """The state saved at `step` (the same in every process and in the test), keyed by
    "/"-joined path as `train_helpers.read_state` returns it."""
    rng = np.random.default_rng(step)
    return {"step": np.int32(step), **{path: rng.standard_normal(shape).astype(np.float32)
                                       for path, shape in SHAPES.items()}}


def state_at(step: int) -> dict:
    """`flat_state_at(step)` as the nested tree the processes save."""
    tree: dict = {}
    for path, value in flat_state_at(step).items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


# Each process: argv = workdir, config file, coordinator port, process id.
_PROCESS = """
import faulthandler, os, sys, time, traceback
import grain, jax, ml_collections, numpy as np

def exit_now(*exc):  # a failed process must not wait for its peer in jax.distributed's shutdown
    traceback.print_exception(*exc)
    sys.stderr.flush()
    os._exit(1)

sys.excepthook = exit_now
faulthandler.enable()
from test_checkpoint_processes import state_at
from radblur_jax.train import distributed, sharding
from radblur_jax.train.checkpointing import Checkpoints, save_config
from radblur_jax.train.config_base import load_config
from radblur_jax.workdir import load_params_for_inference

workdir, config_file, port, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
distributed.maybe_initialize(f"127.0.0.1:{port}", 2, pid)
from jax.experimental import multihost_utils
config = load_config(config_file, "tiny")

def placed(tree, data, fsdp):
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp)))
    shardings = sharding.tree_shardings(tree, mesh, config.sharding)
    arrays = jax.tree.map(lambda x, s: jax.make_array_from_callback(
        np.shape(x), s, lambda idx: np.asarray(x)[idx]), tree, shardings)
    return arrays, sharding.with_shardings(tree, shardings)

def check(restored, want, what):
    for got, ref in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
        for shard in got.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(ref)[shard.index],
                                          err_msg=what)

def iterator():
    return iter(grain.MapDataset.range(1000).to_iter_dataset())

# Process 0 reaches every save's start barrier late, so process 1's periodic save finalising
# in the background and its best save starting on the main thread both wait there at once:
# the two managers' barriers must not share a name. (`_unique_barrier_key` is orbax's hook
# for tests.)
from orbax.checkpoint._src.multihost import multihost as orbax_multihost
barrier_key = orbax_multihost._unique_barrier_key

def late_at_save_start(key):
    if pid == 0 and "set_value_start" in key:
        time.sleep(0.5)
    return barrier_key(key)

orbax_multihost._unique_barrier_key = late_at_save_start

# Save steps 1-3, each also as the best so far; each process's iterator at its own position.
it = iterator()
for _ in range(3 + pid):
    next(it)
save_config(workdir, config)
ckpts = Checkpoints(workdir, keep=3, keep_best=True, async_save=True, best_metric="val_psnr")
for step in (1, 2, 3):
    state, _ = placed(state_at(step), 1, 2)
    kernel = state["params"]["decoder"]["conv"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (48, 64), kernel.sharding
    assert not kernel.is_fully_replicated
    ckpts.save(step, state, it)
    ckpts.save_best(step, {k: state[k] for k in ("params", "ema_params")},
                    {"val_psnr": 20.0 + step})
    next(it)
ckpts.wait()
ckpts.close()

# Damage every array file of step 3 (process 0), then restart as a resumed run does.
multihost_utils.sync_global_devices("saved")
if pid == 0:
    state_dir = os.path.join(workdir, "checkpoints", "3", "state")
    for name in os.listdir(state_dir):
        if name.startswith("ocdbt") or name == "d":
            for root, _, files in os.walk(os.path.join(state_dir, name)):
                for f in files:
                    with open(os.path.join(root, f), "wb") as fh:
                        fh.write(b"garbage")
multihost_utils.sync_global_devices("damaged")
for data, fsdp in ((1, 2), (2, 1)):
    _, abstract = placed(state_at(0), data, fsdp)
    ckpts = Checkpoints(workdir, keep=3, keep_best=False, async_save=True, best_metric=None)
    it = iterator()
    restored, step = ckpts.restore_latest(abstract, it)
    ckpts.close()
    assert step == 2, step
    check(restored, state_at(2), f"data={data}, fsdp={fsdp}")
    assert next(it) == 4 + pid, "the iterator did not resume at this process's position"
assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", "3"))
# Every process reads the best EMA params whole, as stage B's init from a stage-A workdir does.
_, params = load_params_for_inference(os.path.join(workdir, "best", "3"), use_ema=True)
for got, ref in zip(jax.tree.leaves(params), jax.tree.leaves(state_at(3)["ema_params"])):
    np.testing.assert_array_equal(got, ref)
print("restored", flush=True)
"""


def test_state_sharded_across_processes_saves_and_restores(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]),
               JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    args = [str(workdir), os.path.join(REPO, "configs", "deblur.py"), str(free_port())]
    results = run_processes([[sys.executable, "-c", _PROCESS, *args, str(i)] for i in range(2)],
                            env, tmp_path, timeout=300)
    assert all(code == 0 and "restored" in text for code, text in results), \
        processes_report(results)

    # Both processes' shards are in the step-2 checkpoint: orbax alone, whole arrays.
    saved, want = read_state(workdir / "checkpoints" / "2" / "state"), flat_state_at(2)
    assert sorted(saved) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    # What inference loads on one machine from the pod's workdir: the raw params of the
    # periodic checkpoint and the EMA params of the best one (the deblur CLI's reader).
    for step, kind, use_ema in ((2, "checkpoints", False), (3, "best", True)):
        path = workdir / kind / str(step)
        config, params = load_params_for_inference(str(path), use_ema=use_ema)
        assert config.model_config.name == "tiny"
        ref = state_at(step)["ema_params" if use_ema else "params"]
        assert jax.tree.structure(params) == jax.tree.structure(ref), path
        for got, leaf in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(got, leaf, err_msg=str(path))
    assert sorted(os.listdir(workdir / "best")) == ["3"], "the best checkpoint is the last"
    # One iterator state per process.
    data = sorted(f for f in os.listdir(workdir / "checkpoints" / "2" / "data")
                  if f.endswith(".json"))
    assert data == ["process_0-of-2.json", "process_1-of-2.json"], data
