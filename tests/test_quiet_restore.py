"""A checkpoint that fails to restore is reported once, by the caller: the reads orbax abandoned
when it gave up echo nothing (`radblur_jax/quiet_restore.py`), while every other report of the
same kinds still passes."""
from __future__ import annotations

import gc
import logging
import os
import sys
import time
import types

import grain
import jax.numpy as jnp
import ml_collections
import pytest

from radblur_jax.models.configs import radblur_config
from radblur_jax.quiet_restore import quiet_restore
from radblur_jax.train import checkpointing
from radblur_jax.workdir import load_params_for_inference

LEAVES = 64  # enough arrays that reads are still in flight when the first one fails


def _state(scale: float) -> dict:
    params = {f"w{i}": jnp.full((3, 5), scale + i) for i in range(LEAVES)}
    return {"params": params, "ema_params": params, "step": jnp.asarray(int(scale), jnp.int32)}


def _iterator():
    return iter(grain.MapDataset.range(16).batch(4).to_iter_dataset())


def _abstract(state):
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


def _workdir(path: str, steps=(1, 2)) -> None:
    checkpointing.save_config(path, ml_collections.ConfigDict(dict(stage="deblur", model="tiny")),
                              radblur_config("tiny"))
    ckpts = checkpointing.Checkpoints(path, keep=3, keep_best=False, async_save=False,
                                      best_metric=None)
    for step in steps:
        ckpts.save(step, _state(float(step)), _iterator())
    ckpts.wait()
    ckpts.close()


def _corrupt(step_dir: str) -> None:
    for dirpath, _, files in os.walk(os.path.join(step_dir, "state")):
        if "ocdbt" in dirpath or os.path.basename(dirpath) == "d":
            for name in files:
                with open(os.path.join(dirpath, name), "wb") as f:
                    f.write(b"garbage")


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


def test_training_falls_back_with_one_warning(tmp_path, reports):
    _workdir(str(tmp_path))
    _corrupt(os.path.join(tmp_path, "checkpoints", "2"))
    ckpts = checkpointing.Checkpoints(str(tmp_path), 3, False, False, None)
    with pytest.warns(RuntimeWarning, match=r"\[2\].*could not be restored"):
        state, step = ckpts.restore_latest(_abstract(_state(0.0)), _iterator())
    ckpts.close()
    assert step == 1 and float(state["params"]["w0"][0, 0]) == 1.0
    assert reports.settled() == []
    _other_reports_pass(reports)


def test_inference_load_raises_with_no_echo(tmp_path, reports):
    _workdir(str(tmp_path), steps=(1,))
    _corrupt(os.path.join(tmp_path, "checkpoints", "1"))
    with pytest.raises(ValueError, match="checkpoints/1/state"):
        load_params_for_inference(str(tmp_path))
    assert reports.settled() == []
    _other_reports_pass(reports)


def test_a_clean_restore_leaves_no_filter(tmp_path, reports):
    _workdir(str(tmp_path), steps=(1,))
    filters = list(logging.getLogger("asyncio").filters)  # a failed restore's stay
    config, params = load_params_for_inference(str(tmp_path))
    assert config.stage == "deblur" and float(params["w3"][0, 0]) == 4.0
    with quiet_restore(tmp_path):
        pass
    assert sys.unraisablehook == reports.unraisable
    assert logging.getLogger("asyncio").filters == filters
