"""Start RADBlur from converted Depth Anything V2 / DINOv2 weights.

`radblur_from_pretrained(dir, "s", rng)` builds the model, initialises it and replaces the
`depth/` subtree (encoder `pretrained/` and DPT `depth_head/`) with a converted checkpoint
(tools/convert_weights.py); `splice_depth_params` does the replacement on any params tree.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.convert.checkpoint import load_pretrained
from radblur_jax.models.radblur import RADBlur, build_radblur, init_radblur


def splice_depth_params(params: dict, pretrained: dict) -> dict:
    """Returns `params` with the encoder (+ DPT) replaced by converted weights.

    `pretrained`: a Depth Anything tree (`pretrained/`, `depth_head/`) or a DINOv2 ViT tree;
    shapes must match the RADBlur config's encoder/DPT exactly.
    """
    target = dict(params["depth"])
    source = pretrained if "pretrained" in pretrained else {"pretrained": pretrained}
    for name, subtree in source.items():
        if name not in target:
            raise ValueError(f"pretrained params: unexpected top-level key {name!r}; "
                             f"expected one of {sorted(target)}")
        want = jax.tree_util.tree_map(jnp.shape, target[name])
        got = jax.tree_util.tree_map(jnp.shape, subtree)
        if want != got:
            raise ValueError(f"pretrained params {name!r}: shapes/keys differ from the RADBlur "
                             "config's encoder/DPT (check the size matches the checkpoint)")
        target[name] = jax.tree_util.tree_map(jnp.asarray, subtree)
    return {**params, "depth": target}


def radblur_from_pretrained(checkpoint_dir: str, config: ml_collections.ConfigDict | str,
                            rng: jax.Array) -> tuple[RADBlur, Any]:
    """`(model, params)`: RADBlur with its encoder (+ DPT) from a converted checkpoint dir."""
    model = build_radblur(config)
    _, pretrained, _ = load_pretrained(checkpoint_dir)
    return model, splice_depth_params(
        init_radblur(model, rng, compiler_options=init_compiler_options()), pretrained)
