"""XLA compiler options for the programs this package jits (chosen per backend)."""
from __future__ import annotations

import jax


def init_compiler_options() -> dict:
    """XLA options for jitting a parameter init: unoptimised on the CPU backend.

    An init program draws every parameter tensor with its own random ops (hundreds of small
    kernels); XLA:CPU's optimising backend spends far longer compiling them than the program
    takes to run once. Same distributions; values may differ in the last bit from an optimised
    build. Other backends: no options.
    """
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
