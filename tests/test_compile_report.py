"""`pytest --compile-report PATH` (tests/compile_report.py) charges each compile to its test,
across pytest-xdist workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))

_TESTS = textwrap.dedent("""
    import jax
    import numpy as np

    def test_compiles_two():  # numpy inputs: no program but the two jitted ones
        jax.jit(lambda x: x + 1)(np.ones(3, np.float32)).block_until_ready()
        jax.jit(lambda x: x * 2)(np.ones(3, np.float32)).block_until_ready()

    def test_compiles_nothing():
        assert 1 + 1 == 2
""")


def test_report_charges_compiles_to_their_test_across_workers(tmp_path):
    (tmp_path / "test_two.py").write_text(_TESTS)
    report = tmp_path / "out" / "compiles.json"
    report.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=TESTS, JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "compile_report",
                          "-p", "no:cacheprovider", "-n", "2", "--compile-report", str(report),
                          str(tmp_path / "test_two.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    listed = json.loads(report.read_text())
    # Each test once, though the controller gets every worker's reports too; nothing outside.
    assert sorted(r["test"] for r in listed) == ["test_two.py::test_compiles_nothing",
                                                 "test_two.py::test_compiles_two"], listed
    rows = {r["test"].split("::")[-1]: r for r in listed}
    assert rows["test_compiles_two"]["programs"] == 2, rows
    assert rows["test_compiles_two"]["compile_s"] > 0, rows
    assert rows["test_compiles_two"]["test_s"] >= rows["test_compiles_two"]["compile_s"], rows
    assert rows["test_compiles_nothing"]["programs"] == 0, rows  # listed, with its time
    assert os.listdir(report.parent) == ["compiles.json"]  # the workers' parts merged
    assert "XLA compiles: " in run.stdout, run.stdout[-3000:]
