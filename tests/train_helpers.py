"""Helpers for the training tests: load a config file from configs/ by path; read a saved
train state back without the training code."""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from radblur_jax.train import config_base

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(filename: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `configs/<filename>`."""
    return config_base.load_config(os.path.join(CONFIGS, filename), arg)


def read_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The train state saved at `path` (a checkpoint step's `state` directory) as host arrays
    keyed by "/"-joined path (`params/...`, `opt_state/...`, `step`, ...); read with orbax
    alone, no abstract target, so no training code is involved."""
    import jax
    import orbax.checkpoint as ocp
    ckptr = ocp.PyTreeCheckpointer()
    try:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", None) or meta
        tree = getattr(tree, "tree", tree)
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=tree, restore_args=args))
    finally:
        ckptr.close()
    return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
