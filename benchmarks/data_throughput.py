"""Training-input throughput: 256x256 crops per second from 1280x720 PNG pairs.

Generates its own frames into a temp dir (scikit-image photos resized to 1280x720 with mild
sensor-like noise, so PNGs are ~1.5 MB like GoPro frames; blur = 9x9 box filter), then times the
real training pipeline (`radblur_jax.data.pipeline.train_dataset`, batch 8, random crop, flips,
rotations, float32 output) with 1 and 2 grain worker processes, on:
  - full frames (GoPro layout), and
  - 480x480 tiles every 240 px from tools/prepare_subimages.py (PNG compression 3 and 0).

  python benchmarks/data_throughput.py [--frames 12] [--seconds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))

import prepare_subimages  # noqa: E402  pylint: disable=wrong-import-position

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.data import pipeline  # noqa: E402
from radblur_jax.data.sources import make_source  # noqa: E402

TARGET_PER_CORE = 60.0
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def make_frames(root: str, n: int) -> None:
    """Writes `n` 1280x720 blur/sharp pairs in the GoPro layout under `root/train/`."""
    from skimage import data  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    for i in range(n):
        img = getattr(data, PHOTOS[i % len(PHOTOS)])()[..., :3]
        sharp = cv2.resize(np.ascontiguousarray(img), (1280, 720), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 3.0, sharp.shape)
        sharp = np.clip(sharp + noise, 0, 255).astype(np.uint8)
        blur = cv2.blur(sharp, (9, 9))
        for kind, im in (("blur", blur), ("sharp", sharp)):
            d = os.path.join(root, "train", f"GOPR{i // 4:04d}_00_00", kind)
            os.makedirs(d, exist_ok=True)
            cv2.imwrite(os.path.join(d, f"{i:06d}.png"), im[..., ::-1].copy())


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (grain workers); NaN without psutil."""
    try:
        import psutil  # pylint: disable=import-outside-toplevel
    except ImportError:
        return float("nan")
    me = psutil.Process()
    total = 0.0
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(source, workers: int, seconds: float, batch_size: int = 8) -> tuple[float, float]:
    """(crops per wall second, crops per CPU second) after warm-up (worker start and first
    batches excluded). The second is the per-core rate, meaningful on a shared machine."""
    ds = pipeline.train_dataset(source, batch_size=batch_size, crop_size=256, seed=0,
                                worker_count=workers, worker_buffer_size=2, read_threads=1,
                                shard_index=0, shard_count=1)
    it = iter(ds)
    for _ in range(2 * max(workers, 1)):
        next(it)
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    del it
    return n * batch_size / wall, n * batch_size / cpu


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        make_frames(os.path.join(tmp, "gopro"), a.frames)
        frame_mb = np.mean([os.path.getsize(os.path.join(r, f)) for r, _, fs in
                            os.walk(os.path.join(tmp, "gopro")) for f in fs]) / 2**20
        setups = [("full 1280x720 frames", make_source(
            {"name": "gopro", "root": os.path.join(tmp, "gopro"), "raw": True}))]
        for level in (3, 0):
            out = os.path.join(tmp, f"tiles{level}")
            prepare_subimages.prepare({"name": "gopro", "root": os.path.join(tmp, "gopro")}, out,
                                      size=480, step=240, compression=level, workers=2)
            setups.append((f"480x480 tiles, PNG level {level}", make_source(
                {"name": "paired_folder", "root": out, "raw": True})))
        for label, source in setups:
            for w in a.workers:
                cps, per_cpu = measure(source, w, a.seconds)
                results.append({"data": label, "examples": len(source), "workers": w,
                                "crops_per_s": round(cps, 1), "crops_per_cpu_s": round(per_cpu, 1),
                                "meets_60_per_core": per_cpu >= TARGET_PER_CORE})
                print(f"  {label:32s} workers={w}: {cps:7.1f} crops/s, {per_cpu:7.1f} per CPU-s",
                      file=sys.stderr, flush=True)
    lines = ["| input | workers | crops/s (wall) | crops per CPU-second | >= 60 per core |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['data']} | {r['workers']} | {r['crops_per_s']:.1f} | "
                     f"{r['crops_per_cpu_s']:.1f} | {'yes' if r['meets_60_per_core'] else 'no'} |")
    print(f"256x256 crops, batch 8, flips + rot90, float32 out; mean PNG {frame_mb:.2f} MB/frame; "
          f"{os.cpu_count()} CPUs")
    print("\n".join(lines))
    if a.json:
        write_json_atomic(a.json, {"frame_png_mb": round(frame_mb, 2), "cpus": os.cpu_count(),
                                   "results": results})
    return results


if __name__ == "__main__":
    main()
