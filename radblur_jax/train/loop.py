"""`train_and_evaluate(config, workdir)`: the training loop, the same for every stage.

Order: config -> task (model) -> mesh + shardings -> input -> state (restored from WORKDIR,
else initialised) -> jitted steps -> loop (metrics, validation, checkpoints) -> final state.
Resume order: the workdir's latest good checkpoint, else `config.init`, else random.
What differs between stages lives in the task (radblur_jax/train/tasks).
"""
from __future__ import annotations

import os
import signal
import threading

import jax
import ml_collections
import numpy as np

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.data import image_io
from radblur_jax.models.spmd import on_mesh
from radblur_jax.train import checkpointing, reporting, sharding, split_step
from radblur_jax.train import input as input_lib
from radblur_jax.train.config_base import check_config, fit_warmup
from radblur_jax.train.state import TrainState
from radblur_jax.train.tasks import Phase, Task, make_task


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


class _StopFlag:
    """Set by SIGTERM (single process; multi-process runs use JAX's preemption sync)."""

    def __init__(self):
        self.set = False
        self._old = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        self.set = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _init_state(config, task: Task, optimizers, state_sh, rng) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    if config.init.checkpoint or config.init.pretrained:
        params = jax.device_put(task.load_initial_params(init_rng), state_sh.params)
        fn = jax.jit(lambda p, r: task.create_state(p, optimizers, r),
                     in_shardings=(state_sh.params, None), out_shardings=state_sh)
        return fn(params, state_rng)
    fn = jax.jit(lambda r1, r2: task.create_state(task.init_params(r1), optimizers, r2),
                 out_shardings=state_sh, compiler_options=init_compiler_options())
    return fn(init_rng, state_rng)


def _evaluate(config, task: Task, eval_fn, params, mesh, batch_devices: int, step: int, log,
              workdir):
    """Validation over `config.eval_data`: means of the per-image metrics; first grid images
    as a summary and WORKDIR/images/val_<step>.png."""
    bs = int(config.eval.batch_size)
    batch_sh = (sharding.batch_sharding(mesh, config.mesh.batch_axes) if bs % batch_devices == 0
                else sharding.replicated(mesh))
    sums: dict[str, float] = {}
    count, grid_cols = 0, []
    for host, real in input_lib.eval_batches(config, task.fields, task.eval_multiple):
        out = reporting.to_host(eval_fn(params, sharding.replicated_batch(host, batch_sh)))
        for k, v in out.items():
            if v.ndim == 1:
                sums[k] = sums.get(k, 0.0) + float(np.sum(v[:real]))
        count += real
        if sum(len(c[0]) for c in grid_cols) < config.eval.grid_images:
            grid_cols.append([c[:real] for c in task.grid_columns(host, out)])
    scalars = {f"val_{k}": v / max(count, 1) for k, v in sums.items()}
    if grid_cols and config.eval.grid_images:
        cols = [np.concatenate([c[i] for c in grid_cols])[:config.eval.grid_images]
                for i in range(len(grid_cols[0]))]
        grid = reporting.image_grid(cols)
        log.write_images(step, {"val/grid": grid})
        if jax.process_index() == 0:
            image_io.save_png(os.path.join(workdir, "images", f"val_{step:07d}.png"), grid)
    return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains the stage `config.stage` ("depth" | "deblur") in `workdir`; returns the final
    state.

    Restarting with the same command resumes from the latest checkpoint (state and data
    position). SIGTERM saves a checkpoint and returns. A NaN/Inf loss raises
    `NonFiniteLossError` naming the step; no checkpoint is written after it.
    A warmup too long for the run is clipped (`config_base.fit_warmup`; logged, and
    WORKDIR/config.json records the clipped value).
    """
    check_config(config)
    warmup_note = fit_warmup(config)
    tc = config.train
    # ---- model
    task = make_task(config)
    # ---- mesh and shardings
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(tc.batch_size, mesh, config.mesh.batch_axes)
    batch_devices = int(np.prod([mesh.shape[a] for a in config.mesh.batch_axes]))
    rng = jax.random.key(int(config.seed))
    abstract_params = jax.eval_shape(task.init_params, rng)
    # Before the workdir is made: main reports a bad optimizer.freeze as a config error.
    optimizers = task.make_optimizers(abstract_params)
    abstract_state = jax.eval_shape(lambda p, r: task.create_state(p, optimizers, r),
                                    abstract_params, rng)
    shardings = sharding.step_shardings(abstract_state, mesh, config)
    state_sh, batch_sh, repl = shardings
    # ---- input
    iterator = input_lib.train_iterator(config, task.fields, jax.process_index(),
                                        jax.process_count())
    # ---- state: restore or initialise
    os.makedirs(workdir, exist_ok=True)
    if warmup_note:
        reporting.log_line(warmup_note)
    changes = checkpointing.structure_changes(workdir, config)
    ckpts = checkpointing.Checkpoints(
        workdir, int(config.checkpoint.keep), bool(config.checkpoint.keep_best),
        bool(config.checkpoint.async_save), task.best_metric)
    log = reporting.MetricsLog(workdir)
    try:
        restored = ckpts.restore_latest(sharding.with_shardings(abstract_state, state_sh),
                                        iterator)
    except Exception as e:
        if not changes:
            raise
        raise ValueError(f"{workdir}/checkpoints do not restore onto this run's train state, "
                         f"whose structure follows config fields that changed since they were "
                         f"written ({'; '.join(changes)}); resume with the earlier values") from e
    # After the restore: a run that cannot resume leaves the config of its checkpoints in place.
    checkpointing.save_config(workdir, config)
    if restored is not None:
        state, start = restored
        reporting.log_line(f"resumed from {workdir}/checkpoints/{start}")
    else:
        state, start = _init_state(config, task, optimizers, state_sh, rng), 0
    # Records past the start were written by a run that died after its last checkpoint (or
    # before its first): the steps are run again.
    log.truncate_after(start)
    # ---- steps: the main phase, then the task's extra phases
    main = task.train_step(optimizers, split=split_step.use_split_step(tc.split_step),
                           shardings=shardings)
    phases = [Phase("main", int(tc.num_steps), main)] + [
        p._replace(step=split_step.jit_step(p.step, shardings))
        for p in task.extra_phases(optimizers)]
    phase_ends = list(np.cumsum([p.num_steps for p in phases]))
    eval_fn = jax.jit(on_mesh(mesh, task.eval_step, config.mesh.batch_axes),
                      out_shardings=repl)
    # ---- loop
    total = int(phase_ends[-1])
    progress = reporting.Progress(total, start, int(tc.batch_size))
    window: dict[str, list[float]] = {}
    stop = _StopFlag()
    pending = None

    def process(done: int, metrics: dict) -> None:
        host = reporting.to_host(metrics)
        if not np.isfinite(host["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss {float(host['loss'])} at step {done} (the update from step "
                f"{done - 1} to {done}); stopping without saving. The last good checkpoint "
                f"stays in {workdir}/checkpoints")
        for k, v in host.items():
            window.setdefault(k, []).append(float(v))

    try:
        for step in range(start, total):
            done = step + 1
            batch = sharding.global_batch(next(iterator), batch_sh)
            phase = phases[int(np.searchsorted(phase_ends, step, side="right"))]
            state, metrics = phase.step(state, batch)
            if pending is not None:
                process(*pending)
            elif step == start:  # rates exclude compilation: count from the first step's end
                jax.block_until_ready(metrics)
                progress.restart(done)
            pending = (done, metrics)
            is_log = done % tc.log_every == 0 or done == total
            is_eval = tc.eval_every and (done % tc.eval_every == 0 or done in phase_ends)
            is_ckpt = done % tc.checkpoint_every == 0 or done == total
            preempted = stop.set or ckpts.reached_preemption(done)
            if not (is_log or is_eval or is_ckpt or preempted):
                continue
            process(*pending)
            pending = None
            scalars = {}
            if is_log:
                scalars = {k: float(np.mean(v)) for k, v in window.items()}
                if "lr" in window:
                    scalars["lr"] = window["lr"][-1]
                scalars.update(progress.rates(done))
                window.clear()
            if is_eval:
                params = state.ema_params if config.eval.use_ema else state.params
                scalars.update(_evaluate(config, task, eval_fn, params, mesh, batch_devices,
                                         done, log, workdir))
            if scalars:
                log.write(done, scalars)
                reporting.log_line(progress.line(done, scalars) + "".join(
                    f" {k} {v:.4g}" for k, v in scalars.items() if k.startswith("val_")))
            if is_ckpt or preempted:
                ckpts.save(done, state, iterator)
            if is_eval and task.best_metric in scalars:
                ckpts.save_best(done, {"params": state.params,
                                       "ema_params": state.ema_params}, scalars)
            if preempted:
                reporting.log_line(f"preempted: saved step {done} in {workdir}/checkpoints")
                break
    finally:
        stop.restore()
        ckpts.wait()
        ckpts.close()
        log.flush()
        log.close()
    return state
