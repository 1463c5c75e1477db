"""Shared helpers of the conversion tests: the tool's path, running it, its one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_weights.py")
TOL = 1e-5  # parity bound, relative error in float32


def run_tool(*args: str) -> subprocess.CompletedProcess:
    """`tools/convert_weights.py ARGS` in a subprocess, output captured."""
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *needles) -> str:
    """Asserts exit 2 and one `error: ...` line on stderr holding every needle; returns it."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def images(h: int, w: int, seed: int = 0) -> np.ndarray:
    """`(1, h, w, 3)` float32 standard-normal inputs."""
    return np.random.default_rng(seed).normal(size=(1, h, w, 3)).astype(np.float32)
