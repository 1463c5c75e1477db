"""Training output: TensorBoard (clu) + WORKDIR/metrics.jsonl, the console progress line, and
validation image grids (blurry | restored | sharp | depth) as summaries and PNGs."""
from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from radblur_jax.atomic_io import write_bytes_atomic
from radblur_jax.data import image_io

METRICS_FILE = "metrics.jsonl"


def _create_writer(logdir: str, just_logging: bool) -> Any:
    from clu import metric_writers  # imports TensorFlow: kept out of module import
    return metric_writers.create_default_writer(logdir, just_logging=just_logging)


class MetricsLog:
    """Scalars to TensorBoard (WORKDIR/tensorboard) and as one JSON object per logged step
    (with `step`) appended to WORKDIR/metrics.jsonl. Only process 0 writes."""

    def __init__(self, workdir: str):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        # clu's writer imports TensorFlow (seconds of CPU): it is built in a thread, beside the
        # train step's compile, and the first write waits for it.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="metrics_writer")
        self._writer = pool.submit(_create_writer, os.path.join(workdir, "tensorboard"),
                                   not self.active)
        pool.shutdown(wait=False)

    @property
    def writer(self) -> Any:
        """The clu metric writer (waits for it to be built; re-raises an error building it)."""
        return self._writer.result()

    def truncate_after(self, step: int) -> None:
        """Drops records of steps > `step` (written by a run that died after its last
        checkpoint), so the file continues exactly where the restored state is."""
        if not self.active or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [ln for ln in f if ln.strip()]
        keep = []
        for ln in lines:
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError):
                continue  # a half-written last line from a killed run
        if len(keep) != len(lines):
            write_bytes_atomic(self.path, "".join(keep).encode())

    def write(self, step: int, scalars: dict[str, float]) -> None:
        scalars = {k: float(v) for k, v in scalars.items()}
        self.writer.write_scalars(step, scalars)
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": int(step), **scalars}) + "\n")
                f.flush()

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """`images`: name -> `(H, W, 3) uint8`."""
        self.writer.write_images(step, {k: v[None] for k, v in images.items()})

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Rates over the last logging window and the console line `step/total ... ETA`."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        self.total, self.batch = total_steps, batch_size
        self._t, self._step = time.monotonic(), start_step

    def restart(self, step: int) -> None:
        self._t, self._step = time.monotonic(), step

    def rates(self, step: int) -> dict[str, float]:
        now = time.monotonic()
        dt, n = max(now - self._t, 1e-9), step - self._step
        self._t, self._step = now, step
        return {"steps_per_sec": n / dt, "images_per_sec": n * self.batch / dt}

    def line(self, step: int, scalars: dict[str, float]) -> str:
        sps = scalars.get("steps_per_sec", 0.0)
        eta = (self.total - step) / sps if sps > 0 else float("nan")
        shown = " ".join(f"{k} {scalars[k]:.4g}" for k in ("loss", "psnr", "grad_norm", "lr")
                         if k in scalars)
        return (f"step {step}/{self.total} {shown} {sps:.3g} steps/s "
                f"ETA {_fmt_time(eta) if np.isfinite(eta) else '?'}")


def _u8(x: np.ndarray) -> np.ndarray:
    return np.uint8(np.clip(np.asarray(x, np.float32), 0, 1) * 255 + 0.5)


def image_grid(columns: list[np.ndarray]) -> np.ndarray:
    """One row per image: `columns` are `(N, H, W, 3)` float in [0, 1] or `(N, H, W)` disparity
    maps; returns `(N * H, len(columns) * W, 3)` uint8."""
    rows = []
    for i in range(len(columns[0])):
        rows.append(np.concatenate([image_io.colorize_disparity(c[i]) if c.ndim == 3 else _u8(c[i])
                                    for c in columns], axis=1))
    return np.concatenate(rows, axis=0)


def log_line(msg: str) -> None:
    if jax.process_index() == 0:
        logging.info(msg)
        print(msg, flush=True)


def to_host(tree: Any) -> Any:
    """Fully replicated / addressable global arrays -> numpy."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
