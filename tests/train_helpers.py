"""Helpers for the training tests: load a config file from configs/ by path."""
from __future__ import annotations

import os

import ml_collections

from radblur_jax.train import config_base

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(filename: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `configs/<filename>`."""
    return config_base.load_config(os.path.join(CONFIGS, filename), arg)
