"""Restoring an orbax checkpoint without the echo of a failed read.

When one array of a checkpoint cannot be read (a corrupt or truncated file), orbax raises and
closes its asyncio event loop while tensorstore's reads of the other arrays are still in
flight. Each of those reads, as it completes, posts its result to the closed loop: Python
reports every one as an unraisable `RuntimeError: Event loop is closed` (through
`sys.unraisablehook`), and, once the abandoned futures are collected, each failed read again
as "Future/Task exception was never retrieved" (through the `asyncio` logger): a traceback
per array of the checkpoint, around the one message that matters (the caller's: which
checkpoint, what failed, what happens next).

    with quiet_restore(checkpoint_dir):
        restored = manager.restore(step, args=...)

From the block's start those two reports are dropped (the second only when it names a path
under `checkpoint_dir`); every other report passes, and the restore's own exception is
untouched. The block ends with a garbage collection. If the block raised or something was
dropped, the filters stay for the rest of the process, since reads abandoned in the block go
on completing (and their futures being collected) after it; otherwise they are removed. A
block that raised waits until those reads have gone quiet (a fraction of a second): a process
that exits while they complete prints their reports past any filter.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Iterator

_CLOSED_LOOP = "Event loop is closed"
_UNRETRIEVED = ("Future exception was never retrieved", "Task exception was never retrieved")


class _AbandonedReadReports(logging.Filter):
    """Drops the two reports of reads abandoned under `root` (module docstring); counts them."""

    def __init__(self, root: str):
        super().__init__()
        self.root = root
        self.dropped = 0
        self._previous_hook = sys.unraisablehook

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_UNRETRIEVED) and self.root in message:
            self.dropped += 1
            return False
        return True

    def unraisable_hook(self, unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == _CLOSED_LOOP:
            self.dropped += 1
        else:
            self._previous_hook(unraisable)

    def install(self) -> None:
        sys.unraisablehook = self.unraisable_hook
        logging.getLogger("asyncio").addFilter(self)

    def remove(self) -> None:
        if sys.unraisablehook == self.unraisable_hook:
            sys.unraisablehook = self._previous_hook
        logging.getLogger("asyncio").removeFilter(self)


@contextlib.contextmanager
def quiet_restore(checkpoint_dir: str | os.PathLike) -> Iterator[None]:
    """Drops the reports of checkpoint reads under `checkpoint_dir` abandoned by a failed
    restore in the block (module docstring)."""
    reports = _AbandonedReadReports(os.path.abspath(os.fspath(checkpoint_dir)))
    reports.install()
    failed = True
    try:
        yield
        failed = False
    finally:
        gc.collect()  # abandoned futures report when collected: here, while filtered
        if failed:
            _settle(reports)
        if not (failed or reports.dropped):
            reports.remove()


def _settle(reports: _AbandonedReadReports, quiet_s: float = 0.2, max_s: float = 3.0) -> None:
    """Waits until the abandoned reads have stopped reporting for `quiet_s` (at most `max_s`):
    a process that exits while they still complete prints their reports past any filter."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        seen = reports.dropped
        time.sleep(quiet_s)
        gc.collect()
        if reports.dropped == seen:
            return
