"""Shared by the command-line tools: a one-line-error parser, argparse value types (errors name
the flag through argparse) and the output-directory check."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable


class OneLineParser(argparse.ArgumentParser):
    """argparse errors as one line (`prog: error: argument --flag: ...`), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def output_dir_problem(path: str) -> str | None:
    """Why `path` cannot serve as an output directory, or None when it is a writable directory
    or can be created as one (nothing is created here)."""
    target = os.path.abspath(path)
    probe = target
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return ("exists and is not a directory" if probe == target
                else f"cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type` accepting integers >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def image_size(text: str) -> tuple[int, int]:
    """An argparse `type` for `HxW` (or one number for a square), each side >= 8."""
    parts = text.lower().split("x")
    try:
        if len(parts) > 2:
            raise ValueError
        h, w = int(parts[0]), int(parts[-1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 256x256), got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"must be at least 8x8, got {text!r}")
    return h, w
