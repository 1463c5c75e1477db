"""`evaluate(config, workdir)`: restore a dataset split, score it by protocol, write reports.

Called by `python -m radblur_jax.main --config configs/eval.py --workdir DIR` (config fields in
configs/eval.py). Writes under `config.output_dir` (default `WORKDIR/eval/<dataset>_<split>`):

    per_image.csv / per_image.json   one row per image: restored and identity (blurry input)
                                     PSNR/SSIM, depth AbsRel/delta1 where the set has depth
    summary.json, summary.md         means: a markdown table, one row per method, one
                                     `PSNR / SSIM` column per set (the papers' layout); with
                                     `adaptive`, also every sub-decoder's row and the time saved;
                                     on rsblur, saturated / non-saturated columns from the
                                     official lists, or `saturation_split` saying why not
    restored/<name>.png              8-bit restored images (the files that were scored)
    comparison_{best,median,worst}.png   blurry | restored | sharp | depth, with zoomed crops

The protocol is the dataset's own unless `config.protocol` names one (`protocols.protocol_for`:
a protocol that contradicts a benchmark's own is a config error). The summary's means and
table: eval/summary.py.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from radblur_jax.data.image_io import DataError, save_png
from radblur_jax.data.sources import make_source, resolve_spec
from radblur_jax.eval import protocols, reports
from radblur_jax.eval.inference import InferenceOptions, Restorer
from radblur_jax.eval.loading import CheckpointLoadError, LoadedModel, load_random, load_trained
from radblur_jax.eval.metrics import depth_metrics
from radblur_jax.eval.summary import (
    SaturationSplit,
    build_summary,
    saturation_split,
    summary_markdown,
    warn_unlisted,
)


class ConfigError(ValueError):
    """An eval config field is invalid; the message names the field."""


def load_model(config: Any, workdir: str) -> LoadedModel:
    """Random weights (`random_init`) or the checkpoint (default: the workdir's latest)."""
    dtype = config.compute_dtype or None
    if config.random_init:
        return load_random(config.model, config.seed, dtype=dtype)
    return load_trained(config.checkpoint or workdir,
                           use_ema=config.use_ema, dtype=dtype)


def inference_options(config: Any) -> InferenceOptions:
    n = config.num_active
    return InferenceOptions(tile=config.tile, overlap=config.overlap,
                            tile_batch=config.tile_batch,
                            self_ensemble=config.self_ensemble,
                            num_active=n if n and n > 0 else None,
                            adaptive=bool(config.get("adaptive", False)))


@jax.jit
def _depth_scores(disparity: jax.Array, depth: jax.Array) -> dict:
    return depth_metrics(disparity, depth, depth > 0)


def _restored_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, "restored", os.path.splitext(name)[0] + ".png")


def _timed(restorer: Restorer, x: np.ndarray, warm: set | None):
    """`(Restoration, seconds)`; with `warm` (a set of the shapes already run), a new shape is
    run once untimed first, so the time leaves out compilation."""
    if warm is not None and x.shape not in warm:
        restorer.restore(x)
        warm.add(x.shape)
    t0 = time.perf_counter()
    out = restorer.restore(x)
    return out, time.perf_counter() - t0


def _process(batch: list[tuple[int, dict]], restorer: Restorer, batch_size: int,
             protocol: str, ssim_mode: str, out_dir: str, save_images: bool,
             saturation: SaturationSplit, full_depth: Restorer | None = None,
             warm: tuple[set, set] | None = None) -> list[dict]:
    """Restores and scores one same-size batch; returns its rows. With `full_depth` (adaptive
    mode: the same model with every sub-decoder), each row also has `full_psnr`, `full_ssim`,
    `full_seconds` and `sub_decoders` (mean over windows), and times leave out compilation
    (`warm`: the shapes each of the two restorers has run, updated here)."""
    blur = np.stack([item["blur"] for _, item in batch])
    sharp = np.stack([item["sharp"] for _, item in batch])
    x = blur
    if len(batch) < batch_size:  # fixed batch: one compilation per image size
        x = np.concatenate([blur, np.repeat(blur[-1:], batch_size - len(batch), axis=0)])
    adaptive = full_depth is not None
    warm = warm if warm is not None else (set(), set())
    out, seconds = _timed(restorer, x, warm[0] if adaptive else None)
    seconds /= len(batch)
    restored, disparity = out.restored[:len(batch)], out.disparity[:len(batch)]
    full_scores = None
    if adaptive:
        full, full_seconds = _timed(full_depth, x, warm[1])
        full_seconds /= len(batch)
        full_scores = protocols.score_batch(full.restored[:len(batch)], sharp, protocol,
                                            ssim_mode=ssim_mode)
    scores = protocols.score_batch(restored, sharp, protocol, ssim_mode=ssim_mode)
    baseline = protocols.score_batch(blur, sharp, protocol, ssim_mode=ssim_mode)
    depth = None
    if all("depth" in item for _, item in batch):
        gt_depth = np.stack([item["depth"][..., 0] for _, item in batch])
        depth = {k: np.asarray(v) for k, v in _depth_scores(disparity, gt_depth).items()}
    rows = []
    for j, (index, item) in enumerate(batch):
        row = {"index": index, "name": item["name"], "height": blur.shape[1],
               "width": blur.shape[2], "psnr": scores[j]["psnr"], "ssim": scores[j]["ssim"],
               "identity_psnr": baseline[j]["psnr"], "identity_ssim": baseline[j]["ssim"],
               "seconds": seconds}
        if full_scores is not None:
            row.update(sub_decoders=float(np.mean(out.steps[j])),
                       full_psnr=full_scores[j]["psnr"], full_ssim=full_scores[j]["ssim"],
                       full_seconds=full_seconds)
        if "ecc_ok" in scores[j]:
            row["ecc_ok"] = scores[j]["ecc_ok"]
            row["identity_ecc_ok"] = baseline[j]["ecc_ok"]
        if depth is not None:
            row["abs_rel"] = float(depth["abs_rel"][j])
            row["delta1"] = float(depth["delta1"][j])
        if saturation.saturated is not None:
            row["saturated"] = saturation.flag(item["name"])
        if save_images:
            save_png(_restored_path(out_dir, item["name"]), reports.to_uint(restored[j]))
        rows.append(row)
    return rows


def _grids(rows: list[dict], source: Any, restorer: Restorer, batch_size: int,
           out_dir: str) -> list[str]:
    written = []
    for rank, pos in reports.pick_best_median_worst(rows).items():
        row = rows[pos]
        item = source[row["index"]]
        x = np.repeat(item["blur"][None], batch_size, axis=0)
        restored, disparity = restorer(x)
        grid = reports.comparison_grid(
            item["blur"], restored[0], item["sharp"], disparity[0],
            captions=[f"{row['identity_psnr']:.2f} dB", f"{row['psnr']:.2f} dB", "", ""])
        path = os.path.join(out_dir, f"comparison_{rank}.png")
        save_png(path, grid)
        written.append(path)
    return written


def run_evaluation(config: Any, workdir: str,
                   log: Callable[[str], None] = logging.info) -> dict:
    """Evaluates and writes the reports; returns the summary dict (also in summary.json)."""

    try:
        protocol = protocols.protocol_for(config.data.get("name"), config.protocol)
        protocols.check_protocol(protocol, config.ssim_mode)
        options = inference_options(config)
        spec = resolve_spec(config.data)
        source = make_source(spec)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise ConfigError(str(e)) from None
    batch_size = int(config.batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    loaded = load_model(config, workdir)
    restorer = Restorer(loaded.model, loaded.params, options)
    full_depth = None
    if options.adaptive:
        full_depth = Restorer(loaded.model, loaded.params,
                              dataclasses.replace(options, adaptive=False), restorer.mesh)
    if batch_size % restorer.num_devices:
        log(f"batch_size {batch_size} is not a multiple of the {restorer.num_devices} devices; "
            "batches are padded")
    label = f"{spec.get('name')}_{spec.get('split', 'default')}"
    out_dir = config.output_dir or os.path.join(workdir, "eval", label)
    os.makedirs(out_dir, exist_ok=True)
    n = len(source) if not config.max_images else min(len(source), config.max_images)
    log(f"eval: {loaded.description} on {label} ({n} images), protocol {protocol}, "
        f"-> {out_dir}")
    saturation = saturation_split(spec)
    if saturation.note:
        log(f"eval: {saturation.note}")
    elif saturation.saturated is not None and hasattr(source, "records"):
        warn_unlisted([source.records[i].name for i in range(n)], saturation, log)
    rows: list[dict] = []
    pending: dict[tuple, list] = defaultdict(list)
    args = (restorer, batch_size, protocol, config.ssim_mode, out_dir,
            config.save_images, saturation, full_depth, (set(), set()))
    t0 = time.perf_counter()
    for i in range(n):
        item = source[i]
        key = item["blur"].shape
        pending[key].append((i, item))
        if len(pending[key]) == batch_size:
            rows += _process(pending.pop(key), *args)
            mean = protocols.mean_scores(rows, ("psnr",)).get("psnr", float("nan"))
            log(f"eval: {len(rows)}/{n} images, mean finite PSNR {mean:.3f}")
    for key in list(pending):
        rows += _process(pending.pop(key), *args)
    rows.sort(key=lambda r: r["index"])
    seconds = time.perf_counter() - t0
    fields = ["index", "name", "height", "width", "psnr", "ssim", "identity_psnr",
              "identity_ssim"] + [k for k in ("ecc_ok", "identity_ecc_ok", "saturated",
                                              "abs_rel", "delta1", "sub_decoders", "full_psnr",
                                              "full_ssim") if rows and k in rows[0]]
    timing = ["seconds"] + (["full_seconds"] if rows and "full_seconds" in rows[0] else [])
    reports.write_rows(out_dir, "per_image", rows, fields + timing)
    summary = build_summary(rows, config, loaded, spec, protocol, saturation, seconds)
    if config.grids and rows:
        summary["grids"] = _grids(rows, source, restorer, batch_size, out_dir)
    reports.write_json(os.path.join(out_dir, "summary.json"), summary)
    table = summary_markdown(summary)
    reports.write_text(os.path.join(out_dir, "summary.md"), table)
    log("\n" + table)
    return summary


def evaluate(config: Any, workdir: str) -> None:
    """Entry point for `main.py` (stage "eval"): `run_evaluation`, reports under the workdir.

    A bad config field, dataset or checkpoint ends in one error line (absl UsageError, exit
    status 2). Returns None (absl's `app.run` would turn a return value into the exit status).
    """
    from absl import app

    try:
        run_evaluation(config, workdir)
    except ConfigError as e:
        raise app.UsageError(f"--config: {e}", exitcode=2) from None
    except (DataError, CheckpointLoadError) as e:
        raise app.UsageError(str(e), exitcode=2) from None
