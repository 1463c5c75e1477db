"""`train_and_evaluate(config, workdir)`: the training loop of both stages.

Order: config -> model -> mesh + shardings -> input -> state (restored from WORKDIR, else
initialised) -> jitted steps -> loop (metrics, validation, checkpoints) -> final state.
Resume order: the workdir's latest good checkpoint, else `config.init`, else random.
"""
from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.models.configs import PIXEL_LOSSES, check_choice
from radblur_jax.train import checkpointing, reporting, sharding, split_step, steps
from radblur_jax.train import input as input_lib
from radblur_jax.train.model_setup import build_model, initial_params, model_config, random_params
from radblur_jax.train.state import TrainState, create_state, make_optimizers

_INT_FIELDS = ("num_steps", "batch_size", "log_every", "checkpoint_every", "eval_every")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field (cheap: no devices, no data)."""
    if config.stage not in ("depth", "deblur"):
        raise ValueError(f"config.stage={config.stage!r}; train_and_evaluate runs 'depth' or "
                         "'deblur'")
    for name in _INT_FIELDS:
        value = config.train.get(name)
        if not isinstance(value, int) or value < (0 if name == "eval_every" else 1):
            raise ValueError(f"config.train.{name}={value!r}; expected a positive integer")
    for key in ("data", "eval_data"):
        if "name" not in config[key]:
            raise ValueError(f"config.{key}: a dataset spec needs `name`")
    check_choice("train.split_step", config.train.split_step, split_step.SPLIT_STEP_CHOICES)
    if config.stage == "deblur":
        check_choice("loss.pixel", config.loss.pixel, PIXEL_LOSSES)
    model_config(config)  # preset name, overrides, dtype


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


def _with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def _init_state(config, model, cfg, optimizers, state_sh, rng) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    if config.init.checkpoint or config.init.pretrained:
        params = initial_params(config, model, cfg, init_rng)
        params = jax.device_put(params, state_sh.params)
        fn = jax.jit(lambda p, r: create_state(config, p, optimizers, r),
                     in_shardings=(state_sh.params, None), out_shardings=state_sh)
        return fn(params, state_rng)
    fn = jax.jit(lambda r1, r2: create_state(config, random_params(config, model, cfg, r1),
                                             optimizers, r2), out_shardings=state_sh,
                 compiler_options=init_compiler_options())
    return fn(init_rng, state_rng)


def _evaluate(config, eval_fn, params, mesh, batch_devices: int, step: int, log, workdir):
    """Validation over `config.eval_data`: means of the per-image metrics; first grid images
    as a summary and WORKDIR/images/val_<step>.png."""
    bs = int(config.eval.batch_size)
    batch_sh = (sharding.batch_sharding(mesh, config.mesh.batch_axes) if bs % batch_devices == 0
                else sharding.replicated(mesh))
    multiple = int(model_config(config).encoder.patch_size) if config.stage == "depth" else 1
    sums: dict[str, float] = {}
    count, grid_cols = 0, []
    for host, real in input_lib.eval_batches(config, multiple):
        out = reporting.to_host(eval_fn(params, sharding.replicated_batch(host, batch_sh)))
        for k, v in out.items():
            if v.ndim == 1:
                sums[k] = sums.get(k, 0.0) + float(np.sum(v[:real]))
        count += real
        if sum(len(c[0]) for c in grid_cols) < config.eval.grid_images:
            if config.stage == "deblur":
                grid_cols.append([host["blur"][:real], out["restored"][:real],
                                  host["sharp"][:real], out["disparity"][:real]])
            else:
                gt = np.where(host["valid"][..., 0] > 0, 1.0 / np.maximum(host["depth"][..., 0],
                                                                          1e-6), 0.0)
                grid_cols.append([host["image"][:real], gt, out["disparity"][:real]])
    scalars = {f"val_{k}": v / max(count, 1) for k, v in sums.items()}
    if grid_cols and config.eval.grid_images:
        cols = [np.concatenate([c[i] for c in grid_cols])[:config.eval.grid_images]
                for i in range(len(grid_cols[0]))]
        grid = reporting.image_grid(cols)
        log.write_images(step, {"val/grid": grid})
        if jax.process_index() == 0:
            reporting.save_png(os.path.join(workdir, "images", f"val_{step:07d}.png"), grid)
    return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains stage `config.stage` ("depth" | "deblur") in `workdir`; returns the final state.

    Restarting with the same command resumes from the latest checkpoint (state and data
    position). SIGTERM saves a checkpoint and returns. A NaN/Inf loss raises
    `NonFiniteLossError` naming the step; no checkpoint is written after it.
    """
    check_config(config)
    tc = config.train
    # ---- model
    cfg = model_config(config)
    model = build_model(config, cfg)
    # ---- mesh and shardings
    mesh = sharding.make_mesh(config.mesh)
    batch_devices = int(np.prod([mesh.shape[a] for a in config.mesh.batch_axes]))
    if tc.batch_size % batch_devices:
        raise ValueError(f"config.train.batch_size={tc.batch_size} is not divisible by the "
                         f"{batch_devices} devices of mesh axes {tuple(config.mesh.batch_axes)}")
    rng = jax.random.key(int(config.seed))
    abstract_params = jax.eval_shape(lambda r: random_params(config, model, cfg, r), rng)
    optimizers = make_optimizers(config, abstract_params)
    abstract_state = jax.eval_shape(lambda p, r: create_state(config, p, optimizers, r),
                                    abstract_params, rng)
    state_sh = sharding.tree_shardings(abstract_state, mesh, config.sharding)
    batch_sh = sharding.batch_sharding(mesh, config.mesh.batch_axes)
    repl = sharding.replicated(mesh)
    # ---- input
    iterator = input_lib.train_iterator(config, jax.process_index(), jax.process_count())
    # ---- state: restore or initialise
    os.makedirs(workdir, exist_ok=True)
    checkpointing.save_config(workdir, config, cfg)
    ckpts = checkpointing.Checkpoints(
        workdir, int(config.checkpoint.keep), bool(config.checkpoint.keep_best),
        bool(config.checkpoint.async_save), "val_psnr" if config.stage == "deblur" else None)
    log = reporting.MetricsLog(workdir)
    restored = ckpts.restore_latest(_with_shardings(abstract_state, state_sh), iterator)
    if restored is not None:
        state, start = restored
        log.truncate_after(start)
        reporting.log_line(f"resumed from {workdir}/checkpoints/{start}")
    else:
        state, start = _init_state(config, model, cfg, optimizers, state_sh, rng), 0
    # ---- steps
    if config.stage == "deblur":
        gradients_fn = functools.partial(steps.deblur_gradients, model=model, config=config)
        eval_step = functools.partial(steps.deblur_eval_step, model=model)
    else:
        gradients_fn = functools.partial(steps.depth_gradients, model=model, config=config)
        eval_step = functools.partial(steps.depth_eval_step, model=model)
    update_fn = functools.partial(steps.apply_gradients, optimizers=optimizers,
                                  ema_decay=float(tc.ema_decay))
    jit_step = functools.partial(jax.jit, in_shardings=(state_sh, batch_sh),
                                 out_shardings=(state_sh, repl), donate_argnums=(0,))
    if split_step.use_split_step(tc.split_step):
        train_step = split_step.SplitStep(gradients_fn, update_fn, state_sh, batch_sh, repl)
    else:
        train_step = jit_step(functools.partial(split_step.compose, gradients_fn, update_fn))
    exit_steps = int(config.exit.steps) if config.stage == "deblur" else 0
    exit_step = (jit_step(functools.partial(steps.exit_train_step, model=model,
                                            optimizers=optimizers)) if exit_steps else None)
    eval_fn = jax.jit(eval_step, out_shardings=repl)
    # ---- loop
    total = int(tc.num_steps) + exit_steps
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
            state, metrics = (train_step if step < tc.num_steps else exit_step)(state, batch)
            if pending is not None:
                process(*pending)
            elif step == start:  # rates exclude compilation: count from the first step's end
                jax.block_until_ready(metrics)
                progress.restart(done)
            pending = (done, metrics)
            is_log = done % tc.log_every == 0 or done == total
            is_eval = tc.eval_every and (done % tc.eval_every == 0 or done in (tc.num_steps,
                                                                                 total))
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
                scalars.update(_evaluate(config, eval_fn, params, mesh, batch_devices, done,
                                         log, workdir))
            if scalars:
                log.write(done, scalars)
                reporting.log_line(progress.line(done, scalars) + "".join(
                    f" {k} {v:.4g}" for k, v in scalars.items() if k.startswith("val_")))
            if is_ckpt or preempted:
                ckpts.save(done, state, iterator)
            if is_eval and "val_psnr" in scalars:
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
