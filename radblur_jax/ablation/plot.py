"""Line charts drawn with Pillow (no plotting library needed): the ablation's learning curves.

Deterministic: the same series give the same PNG bytes (no timestamps in the file).
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from radblur_jax.atomic_io import write_bytes_atomic

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75))


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def draw_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
               xlabel: str, series: list[tuple[str, list[float], list[float]]]) -> None:
    """One chart in `box` (left, top, right, bottom): `series` = `[(label, xs, ys)]`."""
    font = ImageFont.load_default()
    left, top, right, bottom = box
    px0, py0, px1, py1 = left + 60, top + 24, right - 10, bottom - 40
    xs = [x for _, sx, _ in series for x in sx]
    ys = [y for _, _, sy in series for y in sy if np.isfinite(y)]
    x_lo, x_hi = min(xs), max(xs)
    pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
    y_lo, y_hi = min(ys) - pad, max(ys) + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        u = (x - x_lo) / ((x_hi - x_lo) or 1.0)
        v = (y - y_lo) / ((y_hi - y_lo) or 1.0)
        return px0 + u * (px1 - px0), py1 - v * (py1 - py0)

    draw.text((px0, top + 4), title, fill=(0, 0, 0), font=font)
    draw.rectangle((px0, py0, px1, py1), outline=(0, 0, 0))
    for t in _ticks(y_lo, y_hi):
        _, y = to_px(x_lo, t)
        draw.line((px0, y, px1, y), fill=(225, 225, 225))
        draw.text((left + 4, y - 6), f"{t:g}", fill=(0, 0, 0), font=font)
    for t in _ticks(x_lo, x_hi):
        x, _ = to_px(t, y_lo)
        draw.line((x, py1, x, py1 + 4), fill=(0, 0, 0))
        draw.text((x - 10, py1 + 6), f"{t:g}", fill=(0, 0, 0), font=font)
    draw.text(((px0 + px1) // 2 - 20, py1 + 20), xlabel, fill=(0, 0, 0), font=font)
    for i, (label, sx, sy) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        points = [to_px(x, y) for x, y in zip(sx, sy) if np.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if len(points) < 12 else ():
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((px0 + 8, py0 + 6 + 12 * i), label, fill=colour, font=font)


def save_charts(path: str, panels: list[tuple[str, str, list]], columns: int = 2,
                panel_size: tuple[int, int] = (420, 280)) -> None:
    """Charts `[(title, xlabel, series)]` in a grid, written atomically as a PNG to `path`."""
    import io
    rows = math.ceil(len(panels) / columns)
    w, h = panel_size
    image = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for k, (title, xlabel, series) in enumerate(panels):
        r, c = divmod(k, columns)
        draw_panel(draw, (c * w, r * h, (c + 1) * w, (r + 1) * h), title, xlabel, series)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
