"""Transparent huge pages for XLA:CPU's buffers (glibc's `glibc.malloc.hugetlb` tunable).

XLA:CPU allocates every execution's temporary buffer with `malloc`; a buffer that large is
served by a fresh `mmap` and unmapped when the step ends, so each step touches it anew and pays
one page fault per 4 KiB page: kernel time that grows with the step's working set and can rival
the step's compute. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks
the kernel for transparent huge pages (2 MiB) on its mmaps: up to 512 times fewer faults for the
same buffer (measured figures: docs/benchmarks.md).

Forward-only programs (`reexec_with_huge_pages(forward_only=True)`: the deblur and depth
CLIs, the demo page, `benchmarks/inference.py`) also keep the freed memory for the next call:
one malloc arena, no mmap, no trimming (`FORWARD_ONLY_TUNABLES`). Each call then reuses the
pages the previous one touched instead of faulting in fresh, zeroed ones: faster calls for a
slower compile (figures: docs/benchmarks.md). Training keeps the default arenas: with one
arena its many threads' small allocations contend for one lock, which slows the train step
and its compile more than the kept pages save.

glibc reads tunables once, at process start, so `reexec_with_huge_pages()` re-executes the
running program with the tunables added (a tunable already set in `GLIBC_TUNABLES` is kept as
set); the entry points (`python -m radblur_jax.main`, `radblur_jax.deblur`,
`radblur_jax.depth`, `radblur_jax.demo`, `benchmarks/train_step.py`, `benchmarks/inference.py`)
call it first. `RADBLUR_HUGE_PAGES=0` turns it off. Nothing changes where it cannot help: not
Linux, not glibc >= 2.35, or transparent huge pages disabled in the kernel (`never`).
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
# Forward-only programs: every allocation from the main arena's heap (one arena, no mmap), and
# freed memory kept there (a trim threshold of 64 GiB) for the next call.
FORWARD_ONLY_TUNABLES = (TUNABLE, "glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0",
                         "glibc.malloc.trim_threshold=68719476736")
OPT_OUT = "RADBLUR_HUGE_PAGES"  # "0": never re-execute
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _tunables(forward_only: bool) -> tuple[str, ...]:
    return FORWARD_ONLY_TUNABLES if forward_only else (TUNABLE,)


def _set_names(value: str) -> set[str]:
    return {t.split("=")[0] for t in value.split(":") if t}


def huge_pages_enabled() -> bool:
    """Whether this process started with glibc's huge-page tunable."""
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def tunables_set(forward_only: bool = False) -> bool:
    """Whether this process started with the tunables `reexec_with_huge_pages(forward_only)`
    adds: the huge-page one on, and (`forward_only`) the other `FORWARD_ONLY_TUNABLES` set to
    any value."""
    value = os.environ.get("GLIBC_TUNABLES", "")
    return huge_pages_enabled() and _set_names(value) >= _set_names(
        ":".join(_tunables(forward_only)))


def huge_pages_supported() -> bool:
    """Linux with glibc >= 2.35 and transparent huge pages not switched off."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(v) for v in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):
        return False
    if name != "glibc" or (major, minor) < (2, 35):
        return False
    try:
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def reexec_with_huge_pages(forward_only: bool = False) -> None:
    """Re-executes this program (`sys.orig_argv`) with the huge-page tunable (`forward_only`:
    `FORWARD_ONLY_TUNABLES`, for programs that run no training step), once.

    Returns without doing anything when the tunables are already set, unsupported here, or
    `RADBLUR_HUGE_PAGES=0`. Call it first thing in a `__main__` block: the process is replaced.
    """
    if (tunables_set(forward_only) or os.environ.get(OPT_OUT) == "0"
            or not huge_pages_supported()):
        return
    env = dict(os.environ)
    current = env.get("GLIBC_TUNABLES", "")
    added = [t for t in _tunables(forward_only) if t.split("=")[0] not in _set_names(current)]
    env["GLIBC_TUNABLES"] = ":".join(t for t in (current, *added) if t)
    env[OPT_OUT] = "0"  # never loop, whatever glibc does with the variable
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
