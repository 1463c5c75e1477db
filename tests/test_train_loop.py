"""End-to-end training runs of `python -m radblur_jax.main` on a tiny synthetic set (slow).

One configuration (stage B, tiny model, 32x32 crops, global batch 8, 4 steps) is run:
on 1 device (the reference), on 8 simulated devices (data=4, fsdp=2), as two processes, killed
with SIGKILL after a checkpoint and restarted, with a corrupt latest checkpoint, and with an
exploding learning rate. The reference and the two-process run also validate at the last step,
which saves the best checkpoint beside the periodic one. Runs share a persistent compilation
cache, so repeats compile once.

Runs that must train alike are compared on what the run wrote: losses and gradient norms per
step (metrics.jsonl) and the checkpointed train state, read straight from orbax. Parameters are
compared as updates from the initial values (a raw-parameter comparison is dominated by the
initial weights); the warmup's first learning rate is 0, so the reference's step-1 checkpoint
holds the initial params exactly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import free_port, processes_report, rel_err, run_processes
from train_helpers import read_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One xdist worker runs the whole module (`--dist loadgroup`, .ci/run), so the module fixtures
# (the reference run, the killed-and-resumed run) run once and the runs share one compilation
# cache: the 1-device runs after the reference compile nothing.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("train_loop")]

STEPS = 4
COMMON = [
    "--config", os.path.join(REPO, "configs", "deblur.py") + ":tiny",
    "--config.input.crop_size=32", "--config.train.batch_size=8",
    f"--config.train.num_steps={STEPS}", "--config.train.log_every=1",
    "--config.train.checkpoint_every=2", "--config.train.eval_every=0",
    "--config.exit.steps=0", "--config.optimizer.warmup_steps=1", "--config.input.read_threads=1",
    # An EMA that moves half-way each step: with 0.99 its movement over 4 steps is ~1% of the
    # params' and float32 rounding of the stored EMA alone exceeds 1e-5 of it.
    "--config.train.ema_decay=0.5",
]
# Validation at the last step only: its metrics join that step's record, and the best
# checkpoint is saved at the same step as the periodic one.
EVAL_LAST = (f"--config.train.eval_every={STEPS}",)
VAL_KEYS = ("val_psnr", "val_ssim", "val_blurry_psnr")
# The main phase freezes the exit head (configs/deblur.py: optimizer.freeze); `{}` is the tree.
TRAINED, FROZEN = r"^{}/(?!exit_head/)", r"^{}/exit_head/"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment for the runs: a small synthetic set and a shared compilation cache."""
    from radblur_jax.data.synthetic import SyntheticParams, write_dataset
    root = tmp_path_factory.mktemp("data") / "syn"
    write_dataset(root, 16, 2, SyntheticParams(height=48, width=48), seed=3, frames_per_scene=4)
    e = dict(os.environ)
    e.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return {"env": e, "data": [f"--config.data.root={root}", f"--config.eval_data.root={root}"]}


def _cmd(env, workdir, *extra):
    return [sys.executable, "-m", "radblur_jax.main", "--workdir", str(workdir), *COMMON,
            *env["data"], *extra]


def _run(env, workdir, *extra, devices=1, check=True):
    e = dict(env["env"], XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    p = subprocess.run(_cmd(env, workdir, *extra), env=e, capture_output=True, text=True,
                       timeout=3000)
    if check:
        assert p.returncode == 0, p.stderr[-4000:]
    return p


def _metrics(workdir) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [json.loads(ln) for ln in f if ln.strip()]
    steps = [r["step"] for r in recs]
    assert steps == sorted(set(steps)), steps  # one record per logged step, in order
    return {r["step"]: r for r in recs}


def _series(workdir, key: str = "loss") -> np.ndarray:
    m = _metrics(workdir)
    return np.array([m[s][key] for s in range(1, STEPS + 1)])


def _losses(workdir) -> np.ndarray:
    return _series(workdir, "loss")


def _state(workdir, step: int) -> dict[str, np.ndarray]:
    """The train state checkpointed at `step`, keyed by '/'-joined path (`read_state`)."""
    return read_state(os.path.join(workdir, "checkpoints", str(step), "state"))


def _cat(state: dict[str, np.ndarray], pattern: str) -> np.ndarray:
    """The leaves whose path matches `pattern`, raveled in path order, float64."""
    keys = sorted(k for k in state if re.search(pattern, k))
    assert keys, pattern
    return np.concatenate([np.ravel(state[k]) for k in keys]).astype(np.float64)


def _initial_params(reference) -> dict[str, np.ndarray]:
    """The initial params: the reference's step-1 checkpoint, as step 1 ran at lr 0."""
    assert _metrics(reference)[1]["lr"] == 0.0
    return {k: v for k, v in _state(reference, 1).items() if k.startswith("params/")}


# Adam's first steps divide each gradient element by its own magnitude, so elements whose
# gradient is near zero (here the depth branch's, reached only through depth attention's
# zero-initialised output scale) take lr-sized steps whatever float32 rounding made of them:
# two meshes' updates then differ by 1e-5 to a few 1e-4 relative (by CPU: under 1e-5 on an
# Intel Xeon, 7e-5 to 2.3e-4 on an AMD EPYC), and the next step's gradients, so the Adam
# moments after it, by ~2e-5, while losses, gradient norms and params stay within 1e-5.
# A reduction over part of the batch moves the updates by O(1); a doubled one shows in the
# gradient norms.
TRAJECTORY_BOUND = 1e-3


def _assert_trains_like(workdir, reference, steps=(2, STEPS)) -> None:
    """`workdir` trained as `reference`: losses and gradient norms per step and, at each
    checkpoint of `steps`, the raw params within 1e-5 relative; the updates of the trained
    params and of their EMA from the initial params, and the Adam moments, within
    `TRAJECTORY_BOUND`. Step, rng and optimiser counts equal; the frozen exit head (and its
    EMA) did not move and has no moments."""
    # The depth branch's gradient norm is left out: it reaches the branch only through depth
    # attention's zero-initialised output scale, so over 4 steps it is float32 rounding.
    for key in ("loss", "grad_norm", "grad_norm/stem", "grad_norm/decoder"):
        assert rel_err(_series(workdir, key), _series(reference, key)) <= 1e-5, key
    init = _initial_params(reference)
    for step in steps:
        got, want = _state(workdir, step), _state(reference, step)
        assert sorted(got) == sorted(want), step
        assert not [k for k in want if k.startswith("opt_state/") and "exit_head" in k]
        for key in [k for k in want if want[k].dtype.kind in "iu"]:  # step, rng, counts
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        assert int(got["step"]) == step
        start = _cat(init, TRAINED.format("params"))
        for tree in ("params", "ema_params"):
            trained = TRAINED.format(tree)
            assert rel_err(_cat(got, trained) - start,
                           _cat(want, trained) - start) <= TRAJECTORY_BOUND, (step, tree)
            np.testing.assert_array_equal(_cat(got, FROZEN.format(tree)),
                                          _cat(init, FROZEN.format("params")), err_msg=tree)
        for moment in ("mu", "nu"):
            pattern = f"^opt_state/.*/{moment}(/|$)"  # per leaf, or one flat vector
            assert rel_err(_cat(got, pattern), _cat(want, pattern)) <= TRAJECTORY_BOUND, (
                step, moment)
        assert rel_err(_cat(got, "^params/"), _cat(want, "^params/")) <= 1e-5, step


def _assert_same_state(workdir, reference, step: int = STEPS) -> None:
    """The checkpointed train states at `step` are bitwise equal (params, EMA, optimiser
    state, step, rng)."""
    got, want = _state(workdir, step), _state(reference, step)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ref")
    _run(env, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=1",
         "--config.train.checkpoint_every=1", f"--config.checkpoint.keep={STEPS}", *EVAL_LAST)
    return workdir


def test_module_runs_on_one_worker(request):
    """Under `--dist loadgroup` (.ci/run) pytest-xdist tags this module's node ids with their
    group, so one worker runs them all and the module fixtures (the reference run) run once.
    pytest 9.2 with pytest-xdist 3.8 left them untagged (setup.cfg pins versions that tag)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@train_loop"), request.node.nodeid


def test_reference_run_outputs(reference):
    m = _metrics(reference)
    assert sorted(m) == list(range(1, STEPS + 1))
    for rec in m.values():
        for key in ("loss", "psnr", "grad_norm", "lr", "steps_per_sec", "images_per_sec"):
            assert np.isfinite(rec[key]), (key, rec)
        parts = {k.split("/")[1] for k in rec if k.startswith("grad_norm/")}
        assert parts == {"stem", "decoder", "depth", "exit_head"}, rec
    assert [s for s in m if "val_psnr" in m[s]] == [STEPS]
    assert all(np.isfinite(m[STEPS][k]) for k in VAL_KEYS), m[STEPS]
    assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["1", "2", "3", "4"]
    assert os.listdir(os.path.join(reference, "best")) == [str(STEPS)]
    assert os.listdir(os.path.join(reference, "images")) == [f"val_{STEPS:07d}.png"]
    with open(os.path.join(reference, "config.json")) as f:
        assert json.load(f)["model_config"]["name"] == "tiny"
    assert os.listdir(os.path.join(reference, "tensorboard"))


def test_eight_devices_match_one(env, reference, tmp_path):
    workdir = tmp_path / "mesh8"
    _run(env, workdir, "--config.mesh.data=4", "--config.mesh.fsdp=2", devices=8)
    _assert_trains_like(workdir, reference)


def test_resume_onto_a_different_mesh(env, reference, tmp_path):
    """A 1-device run's step-2 checkpoint resumed on 8 devices (data=4, fsdp=2): the steps
    after the resume and the final state match the uninterrupted 1-device run."""
    workdir = tmp_path / "remesh"
    shutil.copytree(reference, workdir)
    for step in range(3, STEPS + 1):  # latest is now step 2
        shutil.rmtree(workdir / "checkpoints" / str(step))
    run = _run(env, workdir, "--config.mesh.data=4", "--config.mesh.fsdp=2", devices=8)
    assert "resumed from" in run.stdout + run.stderr
    got, want = _metrics(workdir), _metrics(reference)
    assert sorted(got) == sorted(want)
    after = [(got[s]["loss"], want[s]["loss"]) for s in range(3, STEPS + 1)]
    assert rel_err(*map(np.array, zip(*after))) <= 1e-5
    _assert_trains_like(workdir, reference, steps=(STEPS,))


def test_two_processes_match_one(env, reference, tmp_path):
    """Two processes of one device each (data=2) train and validate as one device; at the
    last step the periodic and the best checkpoint are saved across both processes and the
    validation grid is written once."""
    workdir = tmp_path / "two_procs"
    port = free_port()
    e = dict(env["env"], JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
    results = run_processes(
        [_cmd(env, workdir, "--config.mesh.data=2", "--config.mesh.fsdp=1",
              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
              f"--process_id={i}", *EVAL_LAST) for i in range(2)], e, tmp_path, timeout=3000)
    assert all(code == 0 for code, _ in results), processes_report(results)
    _assert_trains_like(workdir, reference)
    got, want = _metrics(workdir)[STEPS], _metrics(reference)[STEPS]
    for key in VAL_KEYS:
        assert rel_err(np.array(got[key]), np.array(want[key])) <= 1e-5, (key, got, want)
    assert os.listdir(workdir / "best") == [str(STEPS)]
    assert os.listdir(workdir / "images") == [f"val_{STEPS:07d}.png"]


@pytest.fixture(scope="module")
def resumed(env, reference, tmp_path_factory):
    """A run killed with SIGKILL right after its step-2 checkpoint, then restarted."""
    workdir = tmp_path_factory.mktemp("killed")
    e = dict(env["env"], XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.Popen(_cmd(env, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=1"),
                         env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(workdir, "checkpoints", "2")
    try:
        while not os.path.isdir(ckpt) and p.poll() is None:
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert not os.path.isdir(os.path.join(workdir, "checkpoints", "4")), "finished before kill"
    run = _run(env, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=1")
    assert "resumed from" in run.stdout + run.stderr
    return workdir


def test_kill_and_resume_logs_the_same_losses(resumed, reference):
    got, want = _metrics(resumed), _metrics(reference)
    assert sorted(got) == sorted(want)
    for step in range(3, STEPS + 1):  # the steps after the resume, exactly equal
        for key in ("loss", "pixel_loss", "psnr", "grad_norm", "lr"):
            assert got[step][key] == want[step][key], (step, key)
    _assert_same_state(resumed, reference)


def test_corrupt_latest_checkpoint_falls_back(env, resumed, reference):
    state_dir = os.path.join(resumed, "checkpoints", str(STEPS), "state")
    for name in os.listdir(state_dir):  # damage every array file of the latest checkpoint
        path = os.path.join(state_dir, name)
        if name.startswith("ocdbt") or name == "d":
            for dirpath, _, files in os.walk(path):
                for f in files:
                    with open(os.path.join(dirpath, f), "wb") as fh:
                        fh.write(b"garbage")
    run = _run(env, resumed, "--config.mesh.data=1", "--config.mesh.fsdp=1")
    out = run.stdout + run.stderr
    assert "could not be restored" in out and "resuming from step 2" in out, out[-3000:]
    assert os.path.isdir(os.path.join(resumed, "corrupt_checkpoints", str(STEPS)))
    got, want = _metrics(resumed), _metrics(reference)
    for step in range(3, STEPS + 1):
        assert got[step]["loss"] == want[step]["loss"], step
    _assert_same_state(resumed, reference)


def test_nan_loss_stops_naming_the_step(env, tmp_path):
    workdir = tmp_path / "nan"
    run = _run(env, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=1",
               "--config.optimizer.lr=1e38", "--config.optimizer.clip_norm=1e38",
               "--config.train.checkpoint_every=1", check=False)
    assert run.returncode != 0
    line = [ln for ln in run.stderr.splitlines() if "non-finite loss" in ln]
    assert line, run.stderr[-3000:]
    bad = int(line[-1].split(" at step ")[1].split()[0])
    assert 2 <= bad <= STEPS
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps and max(steps) == bad - 1  # the last good state is kept, nothing after it
    assert max(_metrics(workdir)) < bad


def test_stage_a_then_stage_b_init(env, tmp_path):
    """Stage A trains and validates depth; stage B's encoder + DPT start from its EMA params."""
    stage_a = tmp_path / "stage_a"
    e = dict(env["env"], XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.run(
        [sys.executable, "-m", "radblur_jax.main", "--workdir", str(stage_a), "--config",
         os.path.join(REPO, "configs", "depth_pretrain.py") + ":tiny", *env["data"],
         "--config.data.name=synthetic_depth", "--config.eval_data.name=synthetic_depth",
         "--config.input.crop_size=28", "--config.train.batch_size=2",
         "--config.train.num_steps=3", "--config.train.log_every=1",
         "--config.train.eval_every=3", "--config.optimizer.warmup_steps=1",
         "--config.eval.num_images=2"], env=e, capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stderr[-4000:]
    m = _metrics(stage_a)
    assert sorted(m) == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in m.values())
    assert 0 <= m[3]["val_abs_rel"] and 0 <= m[3]["val_delta1"] <= 1
    assert os.listdir(os.path.join(stage_a, "images"))

    import jax
    from train_helpers import load_config

    from radblur_jax.train.tasks import make_task
    from radblur_jax.workdir import load_params_for_inference
    config = load_config("deblur.py", "tiny")
    config.init.checkpoint = str(stage_a)
    params = make_task(config).load_initial_params(jax.random.key(0))
    src_config, depth = load_params_for_inference(str(stage_a))
    assert src_config.stage == "depth"
    flat = jax.tree_util.tree_leaves_with_path(depth)
    assert flat
    got = dict(jax.tree_util.tree_leaves_with_path(params["depth"]))
    for path, value in flat:
        np.testing.assert_array_equal(np.asarray(got[path]), value)


def test_sigterm_saves_and_exits_cleanly(env, reference, tmp_path):
    workdir = tmp_path / "sigterm"
    e = dict(env["env"], XLA_FLAGS="--xla_force_host_platform_device_count=1")
    # Output to files: a pipe nobody reads while the test polls could fill and stall the run.
    out_path, err_path = tmp_path / "sigterm.out", tmp_path / "sigterm.err"
    with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
        p = subprocess.Popen(_cmd(env, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=1"),
                             env=e, stdout=out_f, stderr=err_f)
    metrics = os.path.join(workdir, "metrics.jsonl")
    while not os.path.exists(metrics) and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=3000)
    out, err = out_path.read_text(), err_path.read_text()
    assert p.returncode == 0, err[-3000:]
    saved = [ln for ln in out.splitlines() if ln.startswith("preempted: saved step")]
    assert saved, out[-2000:]
    step = int(saved[0].split()[3])
    assert step < STEPS and os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))
    _run(env, workdir, "--config.mesh.data=1", "--config.mesh.fsdp=1")
    assert _losses(workdir).tolist() == _losses(reference).tolist()
    _assert_same_state(workdir, reference)
