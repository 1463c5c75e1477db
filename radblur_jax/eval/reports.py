"""Evaluation reports: per-image CSV/JSON, a summary table, PNGs and comparison grids.

All files are written atomically (temporary name, then rename).
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from radblur_jax.atomic_io import write_bytes_atomic, write_json_atomic
from radblur_jax.data import image_io
from radblur_jax.eval import metrics


def to_uint(img: np.ndarray, bits: int = 8) -> np.ndarray:
    """float in [0, 1] -> uint8/uint16 by `metrics.uint_levels`, the quantiser the scores use,
    so a saved 8-bit PNG holds exactly the levels that were scored."""
    return metrics.uint_levels(img, bits)


def write_rows(out_dir: str, stem: str, rows: Sequence[dict[str, Any]],
               fields: Sequence[str]) -> tuple[str, str]:
    """`<stem>.csv` (columns `fields`) and `<stem>.json` (the rows as a list); returns paths."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(r.get(k)) for k in fields})
    csv_path, json_path = (os.path.join(out_dir, f"{stem}.{e}") for e in ("csv", "json"))
    write_bytes_atomic(csv_path, buf.getvalue().encode())
    write_json_atomic(json_path, [{k: r.get(k) for k in fields if k in r} for r in rows])
    return csv_path, json_path


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: the CSV holds exactly the computed numbers
    return "" if v is None else v


def summary_table(title: str, columns: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]],
                  notes: Sequence[str] = ()) -> str:
    """Markdown table, one row per method and one cell per column: `| method | col ... |`."""
    lines = [f"## {title}", "", "| method | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    lines += ["| " + name + " | " + " | ".join(cells) + " |" for name, cells in rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def psnr_ssim_cell(means: dict) -> str:
    if "psnr" not in means:
        return ""
    return f"{means['psnr']:.2f} / {means['ssim']:.4f}" if "ssim" in means else \
        f"{means['psnr']:.2f}"


def write_text(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _zoom_box(blurry: np.ndarray, sharp: np.ndarray) -> tuple[int, int, int]:
    """(y, x, side) of a square where blurry and sharp differ most (local mean |diff|)."""
    h, w = sharp.shape[:2]
    side = max(8, min(h, w) // 4)
    diff = np.abs(np.asarray(blurry, np.float32) - np.asarray(sharp, np.float32)).mean(-1)
    energy = cv2.boxFilter(diff, -1, (side, side), normalize=True,
                           borderType=cv2.BORDER_CONSTANT)
    half = side // 2
    inner = energy[half:h - side + half + 1, half:w - side + half + 1]
    y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(y), int(x), side


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((22, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def comparison_grid(blurry: np.ndarray, restored: np.ndarray, sharp: np.ndarray,
                    disparity: np.ndarray | None, captions: Sequence[str] = (),
                    panel_width: int = 384) -> np.ndarray:
    """uint8 RGB grid: blurry | restored | sharp | depth, and below each a zoomed crop of the
    region where blur is strongest (red box in the top row). Inputs `(H, W, 3)` in [0, 1]."""
    imgs = [to_uint(blurry), to_uint(restored), to_uint(sharp)]
    if disparity is not None:
        imgs.append(image_io.colorize_disparity(disparity))
    names = ["blurry", "restored", "sharp", "depth (disparity)"][:len(imgs)]
    captions = list(captions) + [""] * (len(imgs) - len(captions))
    h, w = imgs[0].shape[:2]
    y, x, side = _zoom_box(blurry, sharp)
    scale = panel_width / w
    size = (panel_width, max(1, int(round(h * scale))))
    top, bottom = [], []
    for img, name, cap in zip(imgs, names, captions):
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else
                           cv2.INTER_NEAREST)
        p0 = (int(x * scale), int(y * scale))
        p1 = (int((x + side) * scale), int((y + side) * scale))
        cv2.rectangle(small, p0, p1, (255, 0, 0), 1)
        top.append(_label(np.ascontiguousarray(small), f"{name} {cap}".strip()))
        crop = img[y:y + side, x:x + side]
        zoom = cv2.resize(crop, (panel_width, panel_width), interpolation=cv2.INTER_NEAREST)
        bottom.append(_label(zoom, f"{name} x{panel_width / side:.1f}"))
    gap = lambda a: np.full((a.shape[0], 4, 3), 255, np.uint8)
    row = lambda ps: np.concatenate(sum(([p, gap(p)] for p in ps), [])[:-1], axis=1)
    r1, r2 = row(top), row(bottom)
    return np.concatenate([r1, np.full((4, r1.shape[1], 3), 255, np.uint8), r2], axis=0)


def pick_best_median_worst(rows: Sequence[dict], key: str = "psnr") -> dict[str, int]:
    """Indices into `rows` of the best, median and worst value of `key` (NaN ignored)."""
    order = sorted((i for i, r in enumerate(rows) if np.isfinite(r.get(key, np.nan))),
                   key=lambda i: rows[i][key])
    if not order:
        return {}
    return {"best": order[-1], "median": order[len(order) // 2], "worst": order[0]}


def write_json(path: str, obj: Any) -> None:
    write_json_atomic(path, obj)
