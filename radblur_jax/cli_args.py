"""argparse value types shared by the command-line tools: errors name the flag through argparse."""
from __future__ import annotations

import argparse
from collections.abc import Callable


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
