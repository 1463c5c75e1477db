"""Transparent huge pages for XLA:CPU's buffers (glibc's `glibc.malloc.hugetlb` tunable).

XLA:CPU allocates every execution's temporary buffer with `malloc`; a buffer that large is
served by a fresh `mmap` and unmapped when the step ends, so each step touches it anew and pays
one page fault per 4 KiB page: kernel time that grows with the step's working set and can rival
the step's compute. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks
the kernel for transparent huge pages (2 MiB) on its mmaps: up to 512 times fewer faults for the
same buffer (measured figures: docs/benchmarks.md).

glibc reads tunables once, at process start, so `reexec_with_huge_pages()` re-executes the
running program with the tunable added; the entry points (`python -m radblur_jax.main`,
`radblur_jax.deblur`, `radblur_jax.depth`, `benchmarks/train_step.py`) call it first.
`RADBLUR_HUGE_PAGES=0` turns it off. Nothing changes where it cannot help: not Linux, not
glibc >= 2.35, or transparent huge pages disabled in the kernel (`never`).
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "RADBLUR_HUGE_PAGES"  # "0": never re-execute
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_enabled() -> bool:
    """Whether this process started with glibc's huge-page tunable."""
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


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


def reexec_with_huge_pages() -> None:
    """Re-executes this program (`sys.orig_argv`) with the huge-page tunable, once.

    Returns without doing anything when the tunable is already set, unsupported here, or
    `RADBLUR_HUGE_PAGES=0`. Call it first thing in a `__main__` block: the process is replaced.
    """
    if (huge_pages_enabled() or os.environ.get(OPT_OUT) == "0"
            or not huge_pages_supported()):
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"), TUNABLE) if t)
    env[OPT_OUT] = "0"  # never loop, whatever glibc does with the variable
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
