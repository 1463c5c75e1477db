"""Reading a training workdir: its config and the weights of a checkpoint, for inference or init.

Below both `train` (which writes workdirs: `train/checkpointing.py`) and `eval`, the deblur and
depth CLIs and `train/tasks` (which read them). Layout:

    WORKDIR/config.json                 {"config": training config, "model_config": resolved}
    WORKDIR/checkpoints/<step>/state    TrainState (params, optimiser, EMA, step, rng)
    WORKDIR/best/<step>/state           params + EMA params of the best validation PSNR (deblur)
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

CONFIG_FILE = "config.json"


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The training config saved in `workdir`, with the resolved model config as
    `config.model_config`."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            blob = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found; expected a training workdir") from None
    config = ml_collections.ConfigDict(blob["config"])
    config.model_config = ml_collections.ConfigDict(blob["model_config"])
    return config


def checkpoint_step_dir(path: str) -> tuple[str, str]:
    """`(workdir, step directory)` for a workdir (its newest finished checkpoint) or a checkpoint
    step directory (`WORKDIR/checkpoints/<step>` or `WORKDIR/best/<step>`)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(os.path.join(path, "state")):
        if not os.path.basename(path).isdigit():
            raise FileNotFoundError(f"{path}: a checkpoint step directory is named by its step "
                                    "number (WORKDIR/checkpoints/<step>)")
        return os.path.dirname(os.path.dirname(path)), path
    ckpt_root = os.path.join(path, "checkpoints")
    if not os.path.isdir(ckpt_root):
        raise FileNotFoundError(f"{path}: neither a training workdir (no checkpoints/) nor a "
                                "checkpoint step directory (no state/)")
    steps = sorted(int(s) for s in os.listdir(ckpt_root)
                   if s.isdigit() and os.path.isdir(os.path.join(ckpt_root, s, "state")))
    if not steps:
        raise FileNotFoundError(f"{ckpt_root}: no finished checkpoint")
    return path, os.path.join(ckpt_root, str(steps[-1]))


def load_params_for_inference(path: str, *, use_ema: bool = True
                              ) -> tuple[ml_collections.ConfigDict, Any]:
    """`(config, params)` from a training workdir (its latest checkpoint) or one checkpoint
    step directory (`WORKDIR/checkpoints/<step>` or `WORKDIR/best/<step>`).

    `config` is the training config (`stage`, `model`, ...) with the resolved model config in
    `config.model_config` (build the network with `build_radblur(config.model_config)`; for
    stage "depth" params are the Depth Anything tree, `build_depth_anything(cfg)`).
    `params` are host numpy float32 arrays: the EMA weights if `use_ema`, else the raw ones.
    Only that one subtree is read (a partial restore), not the optimiser state.
    """
    import grain
    import orbax.checkpoint as ocp

    from radblur_jax.quiet_restore import quiet_restore

    workdir, step_dir = checkpoint_step_dir(path)
    config = read_config(workdir)
    key = "ema_params" if use_ema else "params"
    # Read through a CheckpointManager with the handlers that saved the step (train/
    # checkpointing.py), so orbax finds the step's metadata where it wrote it.
    manager = ocp.CheckpointManager(
        os.path.dirname(step_dir), options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})
    step = int(os.path.basename(step_dir))
    try:
        with quiet_restore(step_dir):
            tree = manager.item_metadata(step)["state"]
            sub = getattr(tree, "tree", tree)[key]
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), sub)
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={key: sub}, restore_args={key: restore_args},
                                             partial_restore=True)))
    finally:
        manager.close()
    return config, restored["state"][key]
