"""Writes synthetic blurred/sharp/depth sets to disk in the GoPro layout (plus depth maps).

Layout under ``ROOT`` (``scene = index // frames_per_scene``; scenes only group frames, the
frames of a scene are independent pairs):

    ROOT/manifest.json
    ROOT/{train,test}/scene_SSS/blur/NNNNNN.png    8-bit sRGB, blurred
    ROOT/{train,test}/scene_SSS/sharp/NNNNNN.png   8-bit sRGB, sharp (middle sub-frame)
    ROOT/{train,test}/scene_SSS/depth/NNNNNN.npy   (H, W) float32 depth of the sharp frame

``NNNNNN`` is the pair's index within its split. Pair ``index`` of ``split`` is rendered from
``SeedSequence(seed, spawn_key=(SPLIT_IDS[split], index))``, so the bytes depend on the seed
only, not on the number of workers. A dataset is generated in a temporary folder beside ``ROOT``
and renamed into place at the end: an error or a crash never leaves a partial ``ROOT``.

Rendering runs in this process unless ``workers > 1``; then the pairs are split between that many
fresh interpreters running ``radblur_jax.data.synthetic.worker`` (not multiprocessing: nothing
re-imports the caller's ``__main__``, so any caller works, a script without a ``__main__``
guard or ``python -`` included).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from radblur_jax.data.synthetic.render import SyntheticParams, render_pair
from radblur_jax.data.synthetic.textures import texture_source

FORMAT = "radblur_jax.synthetic"
VERSION = 1
SPLIT_IDS = {"train": 0, "test": 1}
PNG_COMPRESSION = 3
LAYOUT = {
    "blur": "{split}/scene_{scene:03d}/blur/{index:06d}.png",
    "sharp": "{split}/scene_{scene:03d}/sharp/{index:06d}.png",
    "depth": "{split}/scene_{scene:03d}/depth/{index:06d}.npy",
}
# The embedded default set (`ensure_default_synthetic` generates it on first use).
DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST, DEFAULT_SIZE, DEFAULT_SEED = 64, 16, 256, 0
DEFAULT_FRAMES_PER_SCENE = 8


def pair_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of pair ``index`` of ``split``: independent of worker count and order."""
    return np.random.SeedSequence(int(seed), spawn_key=(SPLIT_IDS[split], int(index)))


def pair_paths(split: str, index: int, frames_per_scene: int) -> dict[str, str]:
    """Relative paths ``{"blur", "sharp", "depth"}`` of one pair (see ``LAYOUT``)."""
    scene = index // frames_per_scene
    return {k: t.format(split=split, scene=scene, index=index) for k, t in LAYOUT.items()}


def build_manifest(num_train: int, num_test: int, params: SyntheticParams, seed: int,
                   frames_per_scene: int) -> dict:
    """The manifest a dataset with these settings has (no timestamps: same seed, same bytes)."""
    counts = {"train": num_train, "test": num_test}
    return {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "params": json.loads(json.dumps(dataclasses.asdict(params))),
        "frames_per_scene": int(frames_per_scene),
        "splits": {s: {"pairs": int(n), "scenes": math.ceil(n / frames_per_scene)}
                   for s, n in counts.items()},
        "layout": dict(LAYOUT),
        "images": "8-bit RGB PNG, sRGB, blur and sharp of the same size",
        "depth": "float32 .npy (H, W): depth of the sharp frame, larger = farther, in the units "
                 "of params.depth_range (background = depth_range[1])",
        "pair_seed": "numpy SeedSequence(seed, spawn_key=(split_id, index)), split_id train=0 "
                     "test=1",
        "texture_source": texture_source(),
    }


def read_manifest(root: str | os.PathLike) -> dict | None:
    """``ROOT/manifest.json`` as a dict, or None when missing or not a synthetic-set manifest."""
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _to_u8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_pair(tmp_root: str | os.PathLike, split: str, index: int, seed: int,
               params: SyntheticParams, frames_per_scene: int) -> int:
    """Render pair ``index`` of ``split`` and write it under ``tmp_root``; returns bytes written."""
    pair = render_pair(pair_seed(seed, split, index), params)
    written = 0
    for key, rel in pair_paths(split, index, frames_per_scene).items():
        path = Path(tmp_root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if key == "depth":
            np.save(path, pair["depth"].astype(np.float32))
        else:
            bgr = cv2.cvtColor(_to_u8(pair[key]), cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]):
                raise OSError(f"{path}: cv2.imwrite failed")
        written += path.stat().st_size
    return written


def _run_workers(jobs: list[tuple[str, int]], workers: int, spec: dict) -> int:
    """Render ``jobs`` (``(split, index)``) in ``workers`` worker interpreters; total bytes."""
    package_parent = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    procs = []
    try:
        for k in range(workers):
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            proc = subprocess.Popen([sys.executable, "-m", "radblur_jax.data.synthetic.worker"],
                                    env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    text=True)
            procs.append((proc, out, err))
            proc.stdin.write(json.dumps({**spec, "jobs": jobs[k::workers]}))
            proc.stdin.close()
        total = 0
        for k, (proc, out, err) in enumerate(procs):
            if proc.wait() != 0:
                err.seek(0)
                last = (err.read().strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"synthetic worker {k} exited with {proc.returncode}: {last}")
            out.seek(0)
            total += int(out.read().split()[-1])
        return total
    finally:
        for proc, out, err in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            err.close()


def _check_target(root: Path, overwrite: bool) -> None:
    if not root.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{root}: already exists; pass overwrite=True (--overwrite) to "
                              "replace it")
    if read_manifest(root) is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: exists and is not a synthetic dataset (no manifest.json "
                              f"with format {FORMAT!r}); refusing to overwrite it")


def write_dataset(root: str | os.PathLike, num_train: int, num_test: int,
                  params: SyntheticParams = SyntheticParams(), seed: int = 0,
                  frames_per_scene: int = DEFAULT_FRAMES_PER_SCENE, workers: int = 1,
                  overwrite: bool = False) -> dict:
    """Generate a dataset at ``root`` (atomically) and return a summary.

    Refuses an existing ``root`` unless ``overwrite`` (and then only one that is a synthetic
    dataset or empty). ``workers > 1`` renders in that many worker interpreters (see the module
    docstring); the bytes are the same either way. Summary keys: ``root``, ``manifest``,
    ``seconds``, ``pairs_per_s``, ``bytes``.
    """
    root = Path(root).expanduser().absolute()
    if frames_per_scene < 1 or num_train < 0 or num_test < 0 or workers < 1:
        raise ValueError("write_dataset: counts must be >= 0, frames_per_scene and workers >= 1")
    _check_target(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    manifest = build_manifest(num_train, num_test, params, seed, frames_per_scene)
    jobs = [(split, i) for split, n in (("train", num_train), ("test", num_test))
            for i in range(n)]
    start = time.perf_counter()
    try:
        tmp.mkdir()
        for split in SPLIT_IDS:
            (tmp / split).mkdir()
        if workers > 1 and len(jobs) > 1:
            spec = {"tmp_root": str(tmp), "seed": int(seed), "frames_per_scene": frames_per_scene,
                    "params": dataclasses.asdict(params)}
            total = _run_workers(jobs, min(workers, len(jobs)), spec)
        else:
            total = sum(write_pair(tmp, split, i, seed, params, frames_per_scene)
                        for split, i in jobs)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if overwrite and read_manifest(root) == manifest:
            # Another process (one per host in a multi-process run) published this very set
            # meanwhile, and may be reading it: keep it rather than swap in an identical copy.
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _publish(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    return {"root": str(root), "manifest": manifest, "seconds": seconds,
            "pairs_per_s": len(jobs) / seconds if seconds > 0 else float("inf"), "bytes": total}


def _publish(tmp: Path, root: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``root``; an existing ``root`` is moved aside first (overwrite only)."""
    _check_target(root, overwrite)
    old = None
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError as e:
        if old is not None:
            os.rename(old, root)
        raise FileExistsError(f"{root}: could not move the new dataset into place ({e})") from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_root() -> Path:
    """``$RADBLUR_DATA/synthetic-v1``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/radblur_jax/synthetic-v1``."""
    if os.environ.get("RADBLUR_DATA"):
        return Path(os.environ["RADBLUR_DATA"]).expanduser() / f"synthetic-v{VERSION}"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "radblur_jax" / f"synthetic-v{VERSION}"


def default_params() -> SyntheticParams:
    """Parameters of the embedded default set (256x256, otherwise ``SyntheticParams()``)."""
    return SyntheticParams(height=DEFAULT_SIZE, width=DEFAULT_SIZE)


def ensure_default_synthetic(root: str | os.PathLike | None = None, *, workers: int = 1,
                             num_train: int | None = None, num_test: int | None = None,
                             size: int | None = None) -> Path:
    """Path of the default synthetic set, generating it on first use.

    64 train / 16 test pairs at 256x256 (``num_train``/``num_test``/``size`` change that, e.g.
    for a quick test), seed 0, 8 frames per scene, at ``root`` (default ``default_root()``).
    Rendered in this process unless ``workers > 1``. An existing set is reused when its manifest
    matches; a synthetic set with another manifest (older version, other settings) is
    regenerated; any other folder there is an error. Written to a temporary folder and renamed
    into place, so a crash leaves no partial set.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    num_train = DEFAULT_NUM_TRAIN if num_train is None else num_train
    num_test = DEFAULT_NUM_TEST if num_test is None else num_test
    params = default_params() if size is None else SyntheticParams(height=size, width=size)
    expected = build_manifest(num_train, num_test, params, DEFAULT_SEED, DEFAULT_FRAMES_PER_SCENE)
    if read_manifest(root) == expected:
        return root
    try:
        write_dataset(root, num_train, num_test, params, DEFAULT_SEED, DEFAULT_FRAMES_PER_SCENE,
                      workers=workers, overwrite=root.exists())
    except FileExistsError:
        if read_manifest(root) != expected:  # not a concurrent writer finishing first
            raise
    return root
