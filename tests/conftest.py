"""Shared test helpers: relative error, a compiled gradient's temporaries, NHWC <-> NCHW at the
PyTorch boundary; the order in which pytest-xdist hands out the tests; `--compile-report`."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# `--compile-report PATH`: each test's XLA compile seconds (tests/compile_report.py).
from compile_report import (  # noqa: E402, F401  (hooks, defined there)
    pytest_addoption,
    pytest_configure,
    pytest_sessionfinish,
    pytest_terminal_summary,
)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64; `a`, `b` arrays or torch tensors of equal shape."""
    a = np.asarray(a.detach() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach() if hasattr(b, "detach") else b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a coordinator's, a server's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands: list[list[str]], env: dict, log_dir, timeout: float
                  ) -> list[tuple[int, str]]:
    """Starts every command at once and waits for all: `[(exit code, output)]`, each one's
    stdout and stderr in LOG_DIR/process_<i>.log (a file, not a pipe: no process waits for a
    reader while another is waited for). Any still running `timeout` seconds after the start
    is killed (exit code -9), and its output so far is returned like the others'."""
    logs = [os.path.join(log_dir, f"process_{i}.log") for i in range(len(commands))]
    procs = []
    deadline = time.monotonic() + timeout
    try:
        for cmd, log in zip(commands, logs):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT))
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        pass  # killed below; the logs say how far each got
    finally:
        for p in procs:
            p.kill()
            p.wait()
    results = []
    for p, log in zip(procs, logs):
        with open(log) as f:
            results.append((p.returncode, f.read()))
    return results


def processes_report(results: list[tuple[int, str]]) -> str:
    """Each process's exit code and the end of its output. A process that fails takes its
    peers down with it (a barrier's heartbeat timeout): the first error is the cause."""
    return "\n".join(f"--- process {i} (exit {code}):\n{text[-3000:]}"
                     for i, (code, text) in enumerate(results))


def grad_temp_bytes(module, params, x) -> int:
    """XLA's temporaries (`memory_analysis().temp_size_in_bytes`) of the compiled gradient of
    `module.apply(params, x)` (a scalar) with respect to `params`, on this backend."""
    import jax
    grad = jax.jit(jax.grad(lambda p: module.apply(p, x)))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes


def to_nchw(x):
    """numpy NHWC -> torch NCHW float32 tensor."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(t) -> np.ndarray:
    """torch NCHW tensor -> numpy NHWC."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow (compile-bound) tests first, each module kept together: with
    `pytest -n 2 --dist loadgroup` (.ci/run) the long tests start early on both workers and the
    quick ones fill in at the end, instead of one long test running alone at the end.
    (xdist gives the largest `xdist_group`, test_train_loop.py's, out first.)"""
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_modules)  # stable: order kept otherwise
