"""Helpers for the training tests: load a config file from configs/ by path."""
from __future__ import annotations

import importlib.util
import os

import ml_collections

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(filename: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `configs/<filename>`."""
    spec = importlib.util.spec_from_file_location(f"_cfg_{filename[:-3]}",
                                                  os.path.join(CONFIGS, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
