"""host_memory: the re-exec that turns on glibc's transparent-huge-page malloc (and, for
forward-only programs, a heap kept between calls), once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from radblur_jax import host_memory

SCRIPT = ("import os, sys; from radblur_jax import host_memory as h; "
          "print('start', flush=True); "
          "h.reexec_with_huge_pages(forward_only=bool(os.environ.get('FORWARD_ONLY'))); "
          "print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")


def _run(env_extra: dict) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT, "FORWARD_ONLY")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT, "--flag", "x"], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return out.splitlines()


def test_reexec_adds_the_tunable_once_and_keeps_arguments():
    lines = _run({})
    if not host_memory.huge_pages_supported():
        assert lines == ["start", " ['--flag', 'x']"]
        pytest.skip("glibc huge-page malloc not supported on this machine")
    # The first run prints "start" and is replaced; the re-executed run prints both lines.
    assert lines == ["start", "start", f"{host_memory.TUNABLE} ['--flag', 'x']"]


def test_reexec_keeps_other_tunables_and_respects_opt_out():
    if host_memory.huge_pages_supported():
        lines = _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
        assert lines[-1] == f"glibc.malloc.arena_max=2:{host_memory.TUNABLE} ['--flag', 'x']"
    assert _run({host_memory.OPT_OUT: "0"}) == ["start", " ['--flag', 'x']"]


def test_forward_only_adds_the_heap_tunables_and_keeps_the_users():
    if not host_memory.huge_pages_supported():
        pytest.skip("glibc huge-page malloc not supported on this machine")
    lines = _run({"FORWARD_ONLY": "1"})
    assert lines[:2] == ["start", "start"]
    assert lines[-1] == ":".join(host_memory.FORWARD_ONLY_TUNABLES) + " ['--flag', 'x']"
    # A tunable the user set keeps its value; the others are added after it.
    lines = _run({"FORWARD_ONLY": "1", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    want = ["glibc.malloc.arena_max=2"] + [t for t in host_memory.FORWARD_ONLY_TUNABLES
                                           if not t.startswith("glibc.malloc.arena_max=")]
    assert lines[-1] == ":".join(want) + " ['--flag', 'x']"


def test_huge_pages_enabled_reads_the_environment(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert not host_memory.huge_pages_enabled()
    monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{host_memory.TUNABLE}")
    assert host_memory.huge_pages_enabled()
    assert host_memory.tunables_set() and not host_memory.tunables_set(forward_only=True)
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed twice"))
    host_memory.reexec_with_huge_pages()  # already on: returns
    monkeypatch.setenv("GLIBC_TUNABLES", ":".join(host_memory.FORWARD_ONLY_TUNABLES))
    assert host_memory.tunables_set(forward_only=True)
    host_memory.reexec_with_huge_pages(forward_only=True)
