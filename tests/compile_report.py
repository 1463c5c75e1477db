"""`pytest --compile-report PATH`: the XLA compile time of each test, where the suite's time goes.

The suite is bound by XLA compiles on a CPU. With the option, each test process records, per
test, the seconds JAX spent getting executables (`compile_s`: XLA compiles, and loads from the
persistent compilation cache), how many (`programs`) and how many of them came from that cache
(`cache_hits`), from `jax.monitoring` events; compiles in subprocesses a test starts are not
seen. Under pytest-xdist every worker writes `PATH.<worker>.json`; the process that ends the
session merges them into `PATH` (JSON: one row per test, most compile time first) and prints the
top rows. Loaded by tests/conftest.py.
"""
from __future__ import annotations

import glob
import json
import os

import pytest

_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compile-report", metavar="PATH", default=None, type=os.path.abspath,
                     help="write the XLA compile seconds of each test to PATH (JSON)")


class _Recorder:
    """Sums compile events under the test running when they fire ("" outside tests)."""

    def __init__(self) -> None:
        self.test = ""
        self.rows: dict[str, dict] = {}

    def _row(self) -> dict:
        return self.rows.setdefault(self.test, {"test": self.test, "compile_s": 0.0,
                                                "programs": 0, "cache_hits": 0})

    def on_duration(self, event: str, seconds: float, **_) -> None:
        if event == _COMPILE:
            row = self._row()
            row["compile_s"] += seconds
            row["programs"] += 1

    def on_event(self, event: str, **_) -> None:
        if event == _CACHE_HIT:
            self._row()["cache_hits"] += 1

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem):
        self.test = item.nodeid
        yield
        self.test = ""


def _worker_parts(path: str) -> list[str]:
    return sorted(glob.glob(f"{glob.escape(path)}.gw*.json"))


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("compile_report")
    if not path:
        return
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # parts an interrupted run left behind
        for part in _worker_parts(path):
            os.remove(part)
    from jax import monitoring
    recorder = _Recorder()
    monitoring.register_event_duration_secs_listener(recorder.on_duration)
    monitoring.register_event_listener(recorder.on_event)
    config.pluginmanager.register(recorder, "compile_report_recorder")


def _write(path: str, rows: list[dict]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("compile_report")
    recorder = session.config.pluginmanager.get_plugin("compile_report_recorder")
    if not path or recorder is None:
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    rows = [dict(r, compile_s=round(r["compile_s"], 2)) for r in recorder.rows.values()]
    if worker:  # the controller merges the workers' files
        _write(f"{path}.{worker}.json", rows)
        return
    for part in _worker_parts(path):
        with open(part) as f:
            rows += json.load(f)
        os.remove(part)
    _write(path, sorted(rows, key=lambda r: -r["compile_s"]))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    path = config.getoption("compile_report")
    if not path or os.environ.get("PYTEST_XDIST_WORKER") or not os.path.exists(path):
        return
    with open(path) as f:
        rows = json.load(f)
    total = sum(r["compile_s"] for r in rows)
    terminalreporter.section(f"XLA compile seconds per test (test processes: {total:.0f} s)")
    for r in rows[:15]:
        name = r["test"] or "(outside tests)"
        terminalreporter.write_line(f"{r['compile_s']:8.1f} s {r['programs']:4d} programs "
                                    f"({r['cache_hits']} from the cache)  {name}")
    terminalreporter.write_line(f"every test: {path}")
