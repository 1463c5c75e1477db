"""Forward FLOPs as XLA's cost analysis counts them, with every loop unrolled.

XLA's cost analysis counts the body of a `while` loop once, whatever its trip count. Loops sit
in the forward: the sub-decoder `scan` (K iterations) and, on CPU, the blocked attention's
`lax.map` over heads and query tiles (`attention_ops.blocked_attention`) and the striped NAF
blocks' maps over row bands (`models/striped.py`). Counted as compiled, the `s` forward at
1280x720 shows well under half of its FLOPs. `counting_config` therefore unrolls the decoder
and selects the loop-free "xla" attention (the same maths: two matmuls and a softmax per head),
`forward_gflops` runs the NAF blocks on the whole image, and the count comes from the lowered
program (nothing is compiled or run).

    gflops = forward_gflops("s", (1, 720, 1280, 3))
"""
from __future__ import annotations

import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from radblur_jax.eval.inference import InferenceOptions, restore_fn  # noqa: E402
from radblur_jax.models.configs import radblur_config  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402


def counting_config(cfg: Any) -> Any:
    """A copy of a RADBlur config (or preset name) whose forward has no loops: the decoder
    unrolled, attention as XLA's plain dot-product form. Same function, same params."""
    cfg = radblur_config(cfg) if isinstance(cfg, str) else cfg.copy_and_resolve_references()
    cfg.decoder.unroll = True
    cfg.encoder.attention_impl = "xla"
    return cfg


def cpu_cost_analysis(fn, *args) -> dict:
    """XLA's cost analysis of `jax.jit(fn)` lowered for the CPU on `args` (arrays or
    `jax.ShapeDtypeStruct`s). Always the CPU's lowering: on a GPU the lowered program has no
    cost analysis and the compiled one leaves out library calls (cuBLAS, cuDNN)."""
    with jax.default_device(jax.devices("cpu")[0]):
        cost = jax.jit(fn).lower(*args).cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def lowered_gflops(fn, *args) -> float:
    """GFLOPs of `jax.jit(fn)` lowered for `args` (`cpu_cost_analysis`)."""
    return float(cpu_cost_analysis(fn, *args)["flops"]) / 1e9


def abstract_params(model: Any) -> Any:
    """The model's parameter shapes (nothing allocated)."""
    return jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)))["params"],
                          jax.random.key(0))


def forward_gflops(cfg: Any, shape: tuple[int, int, int, int],
                   num_active: int | None = None) -> float:
    """GFLOPs of the inference forward (`restore_fn`, whole image) on `shape (B, H, W, 3)`
    float32, running `num_active` sub-decoders (None: all), every loop counted in full."""
    model = build_radblur(counting_config(cfg))
    # The whole-image backend: the forward-only one runs NAF blocks in loops over row bands.
    fn = restore_fn(model, InferenceOptions(num_active=num_active), backend=model.backend)
    return lowered_gflops(fn, abstract_params(model), jax.ShapeDtypeStruct(shape, jnp.float32))


def encode_gflops(cfg: Any, shape: tuple[int, int, int, int]) -> float:
    """GFLOPs of the depth branch alone (`RADBlur.encode`: ViT + DPT) on `shape (B, H, W, 3)`."""
    model = build_radblur(counting_config(cfg))
    fn = lambda p, x: model.apply({"params": p}, x, method="encode")[1]  # noqa: E731
    return lowered_gflops(fn, abstract_params(model), jax.ShapeDtypeStruct(shape, jnp.float32))
