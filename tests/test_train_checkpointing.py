"""Checkpoints (orbax + grain iterator) and the metrics log, on small stand-in states; a failed
restore reported once, without the echoes of the reads orbax abandoned."""
from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
import types

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from radblur_jax.models.configs import radblur_config
from radblur_jax.quiet_restore import quiet_restore
from radblur_jax.train import checkpointing, reporting
from radblur_jax.workdir import load_params_for_inference


def _iterator():
    return iter(grain.MapDataset.range(100).shuffle(seed=1).batch(4).to_iter_dataset())


def _state(scale: float) -> dict:
    return {"params": {"w": jnp.full((3, 5), scale), "b": jnp.arange(5.0) * scale},
            "step": jnp.asarray(int(scale), jnp.int32)}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=x.sharding), state)


def _corrupt(step_dir: str) -> None:
    for dirpath, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:
            if "ocdbt" in dirpath or os.path.basename(dirpath) == "d":
                with open(os.path.join(dirpath, f), "wb") as fh:
                    fh.write(b"garbage")


def test_restore_state_and_data_position(tmp_path):
    ckpts = checkpointing.Checkpoints(str(tmp_path), keep=2, keep_best=False, async_save=True,
                                      best_metric=None)
    it = _iterator()
    next(it), next(it)
    ckpts.save(2, _state(2.0), it)
    want = next(it)
    ckpts.wait()
    ckpts.close()
    it2 = _iterator()
    again = checkpointing.Checkpoints(str(tmp_path), 2, False, True, None)
    state, step = again.restore_latest(_abstract(_state(0.0)), it2)
    again.close()
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 5), 2.0))
    np.testing.assert_array_equal(next(it2), want)


def test_corrupt_latest_falls_back_with_a_warning(tmp_path):
    ckpts = checkpointing.Checkpoints(str(tmp_path), keep=3, keep_best=False, async_save=False,
                                      best_metric=None)
    it = _iterator()
    for step in (1, 2, 3):
        next(it)
        ckpts.save(step, _state(float(step)), it)
    ckpts.wait()
    ckpts.close()
    _corrupt(os.path.join(tmp_path, "checkpoints", "3"))
    again = checkpointing.Checkpoints(str(tmp_path), 3, False, False, None)
    with pytest.warns(RuntimeWarning, match=r"\[3\].*could not be restored.*resuming from step 2"):
        state, step = again.restore_latest(_abstract(_state(0.0)), _iterator())
    assert step == 2 and float(state["params"]["w"][0, 0]) == 2.0
    assert os.listdir(os.path.join(tmp_path, "corrupt_checkpoints")) == ["3"]
    assert again.manager.all_steps() == [1, 2]
    again.save(3, _state(30.0), _iterator())  # the step can be saved again
    again.wait()
    again.close()


def test_all_corrupt_raises_and_moves_nothing(tmp_path):
    ckpts = checkpointing.Checkpoints(str(tmp_path), 3, False, False, None)
    ckpts.save(1, _state(1.0), _iterator())
    ckpts.wait()
    ckpts.close()
    _corrupt(os.path.join(tmp_path, "checkpoints", "1"))
    again = checkpointing.Checkpoints(str(tmp_path), 3, False, False, None)
    with pytest.raises(Exception):  # noqa: B017 (orbax raises several types for a bad file)
        again.restore_latest(_abstract(_state(0.0)), _iterator())
    again.close()
    assert os.path.isdir(os.path.join(tmp_path, "checkpoints", "1"))


def test_best_keeps_the_highest_metric_and_inference_loading(tmp_path):
    config = ml_collections.ConfigDict(dict(stage="deblur", model="tiny"))
    checkpointing.save_config(str(tmp_path), config, ml_collections.ConfigDict(dict(name="t")))
    ckpts = checkpointing.Checkpoints(str(tmp_path), 3, True, False, "val_psnr")
    for step, psnr in ((1, 20.0), (2, 25.0), (3, 22.0)):
        state = {"params": {"w": jnp.full((2,), float(step))},
                 "ema_params": {"w": jnp.full((2,), -float(step))}}
        ckpts.save(step, state, _iterator())
        ckpts.save_best(step, state, {"val_psnr": psnr})
    ckpts.wait()
    ckpts.close()
    assert os.listdir(os.path.join(tmp_path, "best")) == ["2"]
    cfg, params = load_params_for_inference(str(tmp_path))  # latest, EMA
    assert cfg.stage == "deblur" and cfg.model_config.name == "t"
    np.testing.assert_array_equal(params["w"], [-3.0, -3.0])
    _, raw = load_params_for_inference(os.path.join(tmp_path, "best", "2"), use_ema=False)
    assert isinstance(raw["w"], np.ndarray) and raw["w"].tolist() == [2.0, 2.0]
    with pytest.raises(FileNotFoundError, match="neither a training workdir"):
        load_params_for_inference(str(tmp_path / "best"))


def test_metrics_log_truncates_after_resume(tmp_path):
    log = reporting.MetricsLog(str(tmp_path))
    for step in (1, 2, 3, 4):
        log.write(step, {"loss": 1.0 / step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # a line cut by kill -9
    log = reporting.MetricsLog(str(tmp_path))
    log.truncate_after(2)
    log.write(3, {"loss": 7.0})
    log.close()
    recs = [json.loads(ln) for ln in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in recs] == [1, 2, 3] and recs[-1]["loss"] == 7.0


def test_image_grid_and_progress_line():
    rng = np.random.default_rng(0)
    imgs = rng.random((2, 6, 5, 3)).astype(np.float32)
    disp = rng.random((2, 6, 5)).astype(np.float32)
    grid = reporting.image_grid([imgs, imgs, disp])
    assert grid.shape == (12, 15, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:6, :5], np.uint8(imgs[0] * 255 + 0.5))
    p = reporting.Progress(total_steps=100, start_step=0, batch_size=4)
    line = p.line(50, {"loss": 0.5, "steps_per_sec": 2.0})
    assert line.startswith("step 50/100 loss 0.5") and "ETA 0m25s" in line


def test_resume_with_another_optimizer_layout_names_the_field(tmp_path, monkeypatch):
    """A run's checkpoints restore only onto a state of the same structure: resuming with
    another `optimizer.layout` is an error naming the field and both values, and the
    workdir's config.json still describes the checkpoints."""
    from train_helpers import load_config

    from radblur_jax.train.loop import train_and_evaluate
    from radblur_jax.train.tasks.base import Task
    from radblur_jax.workdir import read_config

    # The state's structure is the init's; the step only has to keep it. A step that counts
    # saves compiling the model's gradients (a minute on two cores) for a test of the resume.
    def counting_step(self, optimizers, *, split, shardings=None):
        return jax.jit(lambda state, batch: (state.replace(step=state.step + 1),
                                             {"loss": jnp.zeros(())}), donate_argnums=0)
    monkeypatch.setattr(Task, "train_step", counting_step)

    def config(layout: str):
        c = load_config("deblur.py", "tiny,num_steps=1,eval_every=0,checkpoint_every=1,"
                                     "exit_steps=0,crop_size=32")
        c.train.batch_size = 2
        c.optimizer.layout = layout
        return c

    workdir = str(tmp_path / "run")
    train_and_evaluate(config("per_leaf"), workdir)
    assert checkpointing.structure_changes(workdir, config("per_leaf")) == []
    with pytest.raises(ValueError, match=r"optimizer\.layout: was 'per_leaf', now 'flat'"):
        train_and_evaluate(config("flat"), workdir)
    assert read_config(workdir).optimizer.layout == "per_leaf"


def test_structure_changes_name_a_teacher_or_an_exit_phase_added(tmp_path):
    """A distillation weight adds the frozen teacher to the state and exit-head steps the exit
    head's Adam state: switching either on or off is a structure change; their sizes are not."""
    from train_helpers import load_config

    def config(distill: float, exit_steps: int):
        c = load_config("deblur.py", f"tiny,exit_steps={exit_steps}")
        c.loss.distill_weight = distill
        return c

    checkpointing.save_config(str(tmp_path), config(0.0, 50))
    assert checkpointing.structure_changes(str(tmp_path), config(0.0, 20)) == []
    assert checkpointing.structure_changes(str(tmp_path), config(0.1, 0)) == [
        "loss.distill_weight > 0: was False, now True", "exit.steps > 0: was True, now False"]


def test_a_fresh_start_drops_metrics_of_a_run_killed_before_its_first_checkpoint(
        tmp_path, monkeypatch):
    from train_helpers import load_config

    from radblur_jax.train.loop import train_and_evaluate
    from radblur_jax.train.tasks.base import Task

    def counting_step(self, optimizers, *, split, shardings=None):  # as in the test above
        return jax.jit(lambda state, batch: (state.replace(step=state.step + 1),
                                             {"loss": jnp.zeros(())}), donate_argnums=0)
    monkeypatch.setattr(Task, "train_step", counting_step)
    c = load_config("deblur.py", "tiny,num_steps=2,eval_every=0,checkpoint_every=2,"
                                 "exit_steps=0,crop_size=32,log_every=1")
    c.train.batch_size = 2
    workdir = tmp_path / "run"
    workdir.mkdir()
    killed = [{"step": s, "loss": 9.0} for s in (1, 2, 3)]  # no checkpoint was written
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in killed))
    train_and_evaluate(c, str(workdir))
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == 0.0 for r in records)


# A checkpoint that fails to restore is reported once, by the caller: the reads orbax abandoned
# when it gave up echo nothing (radblur_jax/quiet_restore.py), while every other report of the
# same kinds still passes.
LEAVES = 64  # enough arrays that reads are still in flight when the first one fails


def _many_leaves(scale: float) -> dict:
    params = {f"w{i}": jnp.full((3, 5), scale + i) for i in range(LEAVES)}
    return {"params": params, "ema_params": params, "step": jnp.asarray(int(scale), jnp.int32)}


def _workdir_many_leaves(path: str, steps=(1, 2)) -> None:
    checkpointing.save_config(path, ml_collections.ConfigDict(dict(stage="deblur", model="tiny")),
                              radblur_config("tiny"))
    ckpts = checkpointing.Checkpoints(path, keep=3, keep_best=False, async_save=False,
                                      best_metric=None)
    for step in steps:
        ckpts.save(step, _many_leaves(float(step)), _iterator())
    ckpts.wait()
    ckpts.close()


class _Reports(logging.Handler):
    """What reaches `sys.unraisablehook` and the `asyncio` logger."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage()[:200])

    def unraisable(self, unraisable) -> None:
        self.seen.append(repr(unraisable.exc_value)[:200])

    def settled(self) -> list[str]:
        for _ in range(3):  # late reads and collected futures
            time.sleep(0.2)
            gc.collect()
        return self.seen


@pytest.fixture
def reports(monkeypatch):
    r = _Reports()
    monkeypatch.setattr(sys, "unraisablehook", r.unraisable)
    logging.getLogger("asyncio").addHandler(r)
    yield r
    logging.getLogger("asyncio").removeHandler(r)


def _other_reports_pass(reports: _Reports) -> None:
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("something else"),
                                             exc_type=RuntimeError, exc_traceback=None,
                                             err_msg=None, object=None))
    logging.getLogger("asyncio").error("Future exception was never retrieved: elsewhere")
    assert reports.seen == ["RuntimeError('something else')",
                            "Future exception was never retrieved: elsewhere"]


def test_a_failed_restore_echoes_nothing_in_training(tmp_path, reports):
    _workdir_many_leaves(str(tmp_path))
    _corrupt(os.path.join(tmp_path, "checkpoints", "2"))
    ckpts = checkpointing.Checkpoints(str(tmp_path), 3, False, False, None)
    with pytest.warns(RuntimeWarning, match=r"\[2\].*could not be restored"):
        state, step = ckpts.restore_latest(_abstract(_many_leaves(0.0)), _iterator())
    ckpts.close()
    assert step == 1 and float(state["params"]["w0"][0, 0]) == 1.0
    assert reports.settled() == []
    _other_reports_pass(reports)


def test_a_failed_restore_echoes_nothing_in_inference_loading(tmp_path, reports):
    _workdir_many_leaves(str(tmp_path), steps=(1,))
    _corrupt(os.path.join(tmp_path, "checkpoints", "1"))
    with pytest.raises(ValueError, match="checkpoints/1/state"):
        load_params_for_inference(str(tmp_path))
    assert reports.settled() == []
    _other_reports_pass(reports)


def test_a_clean_restore_leaves_no_filter(tmp_path, reports):
    _workdir_many_leaves(str(tmp_path), steps=(1,))
    filters = list(logging.getLogger("asyncio").filters)  # a failed restore's stay
    config, params = load_params_for_inference(str(tmp_path))
    assert config.stage == "deblur" and float(params["w3"][0, 0]) == 4.0
    with quiet_restore(tmp_path):
        pass
    assert sys.unraisablehook == reports.unraisable
    assert logging.getLogger("asyncio").filters == filters
