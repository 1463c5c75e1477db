"""Checkpoints: an orbax CheckpointManager holding the train state and the grain iterator.

Layout of a training workdir:

    WORKDIR/config.json                 the training config as it ran + its model config
    WORKDIR/checkpoints/<step>/state    TrainState (params, optimiser, EMA, step, rng)
    WORKDIR/checkpoints/<step>/data     grain iterator state, one JSON file per process
    WORKDIR/best/<step>/state           params + EMA params of the best validation PSNR (deblur)
    WORKDIR/corrupt_checkpoints/<step>  checkpoints that failed to restore (moved aside)

Saves are asynchronous (`wait()` before exiting). Restoring takes an abstract state whose leaves
carry the shardings of the current mesh, so a run resumes on a different mesh shape. Reading a
workdir for inference or init (its config, one checkpoint's weights): `radblur_jax.workdir`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from radblur_jax.atomic_io import write_json_atomic
from radblur_jax.quiet_restore import quiet_restore
from radblur_jax.workdir import CONFIG_FILE


class _IteratorSnapshot:
    """The iterator's state at save time (grain's handler may write it after we move on)."""

    def __init__(self, iterator: Any):
        self._state = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._state


def save_config(workdir: str, config: ml_collections.ConfigDict,
                model_cfg: ml_collections.ConfigDict | None = None) -> None:
    """Writes WORKDIR/config.json (process 0; atomic): `{"config": the config as it runs,
    "model_config": the model config (default `config.model`)}`; readers build the network
    from "model_config"."""
    if model_cfg is None:
        model_cfg = config.model
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        write_json_atomic(os.path.join(workdir, CONFIG_FILE),
                          {"config": json.loads(config.to_json_best_effort()),
                           "model_config": json.loads(model_cfg.to_json_best_effort())})


# Config fields that decide the train state's tree structure: a checkpoint restores only onto a
# state built with the same values. For the last two only whether they are positive matters:
# a distillation weight adds the frozen teacher, exit-head steps the exit head's Adam state.
STATE_STRUCTURE_FIELDS = ("optimizer.layout", "optimizer.freeze", "optimizer.accumulate_steps",
                          "loss.distill_weight > 0", "exit.steps > 0")


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    dotted, positive = dotted.removesuffix(" > 0"), dotted.endswith(" > 0")
    node = config
    for key in dotted.split("."):
        node = node.get(key) if node is not None else None
    if positive:
        return node is not None and node > 0
    return list(node) if isinstance(node, (list, tuple)) else node


def structure_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """`STATE_STRUCTURE_FIELDS` whose value in WORKDIR/config.json (the run that wrote the
    checkpoints) differs from `config`'s, as "field: was X, now Y"; [] without a config.json."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = ml_collections.ConfigDict(json.load(f)["config"])
    return [f"{name}: was {_field(saved, name)!r}, now {_field(config, name)!r}"
            for name in STATE_STRUCTURE_FIELDS if _field(saved, name) != _field(config, name)]


_REPLICAS_WHOLE = False


def _save_replicas_whole_on_cpu() -> None:
    """On the CPU backend, orbax writes a replicated array whole from its first replica.

    Replica-parallel saving (each replica writes a slice) pays off where devices have their own
    bandwidth; on simulated CPU devices it only compiles one small slicing program per array
    shape and replica count before the first save. Other backends keep orbax's default.
    """
    global _REPLICAS_WHOLE
    if _REPLICAS_WHOLE or jax.default_backend() != "cpu":
        return
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns on any override
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        absl_logging.set_verbosity(verbosity)
    _REPLICAS_WHOLE = True


class Checkpoints:
    """Periodic (keep N) and best-by-metric checkpoint managers of one workdir."""

    def __init__(self, workdir: str, keep: int, keep_best: bool, async_save: bool,
                 best_metric: str | None):
        _save_replicas_whole_on_cpu()
        self.workdir = workdir
        self.best_metric = best_metric if keep_best else None
        self._async = async_save
        self._keep = keep
        self.manager = self._manager("checkpoints", keep, None)
        self.best = (self._manager("best", 1, best_metric) if self.best_metric else None)

    def _manager(self, sub: str, keep: int, metric: str | None) -> ocp.CheckpointManager:
        # Across processes orbax syncs each save at barriers named by the operation (some also
        # by the step), not by the manager. An evaluation step saves with both managers: the
        # periodic save finalising in a background thread and the best save starting on the
        # main thread could wait at one barrier name at once in one process, which the
        # coordination service refuses (the run then dies at the heartbeat timeout). A
        # prefix per manager keeps their barriers apart.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=self._async,
            best_fn=(lambda m: m[metric]) if metric else None, best_mode="max",
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=sub))
        return ocp.CheckpointManager(
            os.path.join(os.path.abspath(self.workdir), sub), options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler()})

    def save(self, step: int, state: Any, iterator: Any) -> None:
        """Starts an (async) save of `state` and the iterator position at `step`."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))), force=True)

    def save_best(self, step: int, weights: dict[str, Any], metrics: dict[str, float]) -> None:
        """Keeps `weights` (`{"params", "ema_params"}`: what inference needs) if
        `metrics[best_metric]` is the best so far."""
        if self.best is None or step in self.best.all_steps():
            return
        self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(weights)),
                       metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
        if self.best is not None:
            self.best.close()

    def restore_latest(self, abstract_state: Any, iterator: Any) -> tuple[Any, int] | None:
        """Restores the newest checkpoint that restores cleanly onto `abstract_state`
        (`ShapeDtypeStruct`s with the target shardings) and `iterator`.

        Newer checkpoints that fail are moved to WORKDIR/corrupt_checkpoints/ with a warning;
        if none restores, the newest one's error is raised and nothing is moved.
        Returns `(state, step)`, or None when there is no checkpoint.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed: list[tuple[int, Exception]] = []
        for step in steps:
            try:
                with quiet_restore(self.workdir):
                    restored = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=grain.checkpoint.CheckpointRestore(iterator)))
            except Exception as e:  # pylint: disable=broad-except
                failed.append((step, e))
                continue
            if failed:
                self._set_aside([s for s, _ in failed], step, failed[0][1])
            return restored["state"], step
        if failed:
            raise failed[0][1]
        return None

    def _set_aside(self, bad_steps: list[int], good: int, error: Exception) -> None:
        self.wait()
        dest = os.path.join(self.workdir, "corrupt_checkpoints")
        if jax.process_index() == 0:
            os.makedirs(dest, exist_ok=True)
            for s in bad_steps:
                src = os.path.join(self.workdir, "checkpoints", str(s))
                target = os.path.join(dest, str(s))
                if os.path.exists(target):
                    shutil.rmtree(target)
                shutil.move(src, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("radblur_checkpoint_set_aside")
        msg = (f"checkpoint(s) {bad_steps} in {self.workdir}/checkpoints could not be restored "
               f"({type(error).__name__}: {str(error)[:300]}); moved to {dest}; resuming from "
               f"step {good}")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logging.warning(msg)
        self.manager.close()
        self.manager = self._manager("checkpoints", self._keep, None)
