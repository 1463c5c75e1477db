"""`pytest --compile-report PATH`: the XLA compile time of each test, where the suite's time goes.

On a CPU much of the suite's time is XLA compiles. With the option, each test process records, per
test, the seconds JAX spent getting executables (`compile_s`: XLA compiles, and loads from the
persistent compilation cache), how many (`programs`) and how many of them came from that cache
(`cache_hits`), from `jax.monitoring` events, beside the test's own time (`test_s`: setup, call
and teardown); compiles in subprocesses a test starts are not seen. Under pytest-xdist every
worker writes `PATH.<worker>.json`; the process that ends the session merges them into `PATH`
(JSON: one row per test, most compile time first) and prints the top rows. Loaded by
tests/conftest.py.
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
        return self.rows.setdefault(self.test, {"test": self.test, "test_s": 0.0,
                                                "compile_s": 0.0, "programs": 0,
                                                "cache_hits": 0})

    def on_duration(self, event: str, seconds: float, **_) -> None:
        if event == _COMPILE:
            row = self._row()
            row["compile_s"] += seconds
            row["programs"] += 1

    def on_event(self, event: str, **_) -> None:
        if event == _CACHE_HIT:
            self._row()["cache_hits"] += 1

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem):
        self.test = item.nodeid
        try:
            return (yield)
        finally:
            self.test = ""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Setup, call and teardown; where the test runs only (an xdist controller gets every
        # worker's reports too).
        if report.nodeid == self.test:
            self._row()["test_s"] += report.duration


def _worker(config: pytest.Config) -> str | None:
    """The xdist worker id ("gw0") in a worker process, else None (not the environment: a
    pytest run that a test starts inherits its worker's variables)."""
    workerinput = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else None


def _worker_parts(path: str) -> list[str]:
    return sorted(glob.glob(f"{glob.escape(path)}.gw*.json"))


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("compile_report")
    if not path:
        return
    if not _worker(config):  # parts an interrupted run left behind
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
    worker = _worker(session.config)
    rows = [dict(r, test_s=round(r["test_s"], 2), compile_s=round(r["compile_s"], 2))
            for r in recorder.rows.values()]
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
    if not path or _worker(config) or not os.path.exists(path):
        return
    with open(path) as f:
        rows = json.load(f)
    compile_s, test_s = (sum(r[k] for r in rows) for k in ("compile_s", "test_s"))
    terminalreporter.section(f"XLA compiles: {compile_s:.0f} s of the tests' {test_s:.0f} s")
    for r in rows[:15]:
        name = r["test"] or "(outside tests)"
        terminalreporter.write_line(f"{r['compile_s']:7.1f} s of {r['test_s']:6.1f} s "
                                    f"{r['programs']:4d} programs ({r['cache_hits']} from the "
                                    f"cache)  {name}")
    terminalreporter.write_line(f"every test: {path}")
