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
a protocol that contradicts a benchmark's own is a config error).
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


@dataclasses.dataclass(frozen=True)
class SaturationSplit:
    """RSBlur's official split of its test images: `saturated` and `non_saturated` names (both
    None when there is no split), and `note`, why not (empty when there is one)."""
    saturated: frozenset[str] | None = None
    non_saturated: frozenset[str] | None = None
    note: str = ""

    def flag(self, name: str) -> bool | None:
        """True / False by the official lists (checked in the official script's order), None
        for a name in neither."""
        if self.saturated is None:
            return None
        if name in self.non_saturated:
            return False
        return True if name in self.saturated else None


def saturation_split(spec: dict) -> SaturationSplit:
    """The official `RSBlur_<variant>_test_{saturation,non_saturation}.txt` lists of an rsblur
    test split, found where the dataset's own lists are; otherwise a note saying why not."""
    if spec.get("name") != "rsblur":
        return SaturationSplit()
    subset, split = spec.get("subset", "all"), spec.get("split", "train")
    if subset != "all":
        return SaturationSplit(note=f"subset {subset}: the run is one side of the saturation "
                                    "split already")
    if split != "test":
        return SaturationSplit(note=f"the official saturation lists cover the test split only "
                                    f"(this is {split}); no saturated / non-saturated means")
    names = []
    for part in ("saturation", "non_saturation"):
        try:
            names.append(frozenset(r.name for r in make_source({**spec, "subset": part}).records))
        except (DataError, ValueError) as e:
            return SaturationSplit(note=f"RSBlur saturation lists not found or unreadable "
                                        f"({e}); no saturated / non-saturated means")
    return SaturationSplit(*names)


def _warn_unlisted(names: list[str], saturation: SaturationSplit,
                   log: Callable[[str], None]) -> list[str]:
    """Logs a warning naming the images in neither official list; returns them."""
    unlisted = [n for n in names if saturation.flag(n) is None]
    if unlisted:
        log(f"eval: WARNING: {len(unlisted)} of {len(names)} images are in neither RSBlur "
            f"saturation list (e.g. {', '.join(unlisted[:3])}); they count in the 'all' mean "
            "only, not in the saturated or non-saturated one (the official script stops here)")
    return unlisted


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


def _summary(rows: list[dict], config: Any, loaded: LoadedModel, spec: dict, protocol: str,
             saturation: SaturationSplit, seconds: float) -> dict:
    ssim_mode = config.ssim_mode
    keys = ("psnr", "ssim", "abs_rel", "delta1")
    ident = [{"psnr": r["identity_psnr"], "ssim": r["identity_ssim"]} for r in rows]
    summary = {
        "model": loaded.description, "dataset": spec.get("name"), "split": spec.get("split"),
        "root": spec.get("root"), "protocol": protocol,
        "ssim": protocols.ssim_label(protocol, ssim_mode),
        "psnr": "RGB PSNR on outputs clipped and rounded to 8 bits" + {
            "gopro": "", "realblur": ", masked after ECC alignment",
            "rsblur": ", masked after ECC alignment, aligned pair clipped to [0, 1]"}[protocol],
        "tile": config.tile, "overlap": config.overlap,
        "self_ensemble": config.self_ensemble,
        "restored": protocols.mean_scores(rows, keys),
        "identity": protocols.mean_scores(ident, ("psnr", "ssim")),
        "seconds_total": seconds, "devices": jax.device_count(),
    }
    if rows and "full_psnr" in rows[0]:
        adaptive_s = sum(r["seconds"] for r in rows)
        full_s = sum(r["full_seconds"] for r in rows)
        full = protocols.mean_scores(
            [{"psnr": r["full_psnr"], "ssim": r["full_ssim"]} for r in rows], ("psnr", "ssim"))
        summary["adaptive"] = {
            "sub_decoders": loaded.model.cfg.decoder.num_sub_decoders,
            "mean_sub_decoders": float(np.mean([r["sub_decoders"] for r in rows])),
            "full_depth": full,
            "psnr_change": summary["restored"].get("psnr", np.nan) - full.get("psnr", np.nan),
            "seconds": adaptive_s, "full_depth_seconds": full_s,
            "time_saved": 1.0 - adaptive_s / full_s if full_s > 0 else 0.0,
        }
    if rows and "ecc_ok" in rows[0]:
        summary["ecc_failures"] = sum(not r["ecc_ok"] for r in rows)
        summary["identity_ecc_failures"] = sum(not r["identity_ecc_ok"] for r in rows)
    if spec.get("name") == "rsblur":
        summary["saturation_split"] = saturation.note or "official lists"
        if saturation.saturated is not None:
            unlisted = [r["name"] for r in rows if r.get("saturated") is None]
            summary["saturation_unlisted"] = len(unlisted)
            summary["saturation_unlisted_examples"] = unlisted[:10]
    if rows and "saturated" in rows[0]:
        for label, flag in (("saturated", True), ("non_saturated", False)):
            sub = [r for r in rows if r["saturated"] == flag]
            summary[f"restored_{label}"] = protocols.mean_scores(sub, ("psnr", "ssim"))
            summary[f"identity_{label}"] = protocols.mean_scores(
                [{"psnr": r["identity_psnr"], "ssim": r["identity_ssim"]} for r in sub],
                ("psnr", "ssim"))
    return summary


def _mean_notes(summary: dict) -> list[str]:
    """`protocols.mean_notes` of every mean in the summary (which rows each leaves out)."""
    means = [(k, summary[k], ("psnr", "ssim", "abs_rel", "delta1")) for k in
             ("restored", "identity", "restored_saturated", "identity_saturated",
              "restored_non_saturated", "identity_non_saturated") if k in summary]
    if "adaptive" in summary:
        means.append(("all sub-decoders", summary["adaptive"]["full_depth"], ("psnr", "ssim")))
    return [n for label, m, keys in means
            for n in protocols.mean_notes(m, keys, label.replace("_", " ") + ": ")]


def summary_markdown(summary: dict) -> str:
    """The summary as a markdown table (`reports.summary_table`) with its notes."""
    col = f"{summary['dataset']} ({summary['split']})"
    columns, cells_r, cells_i = [col], [reports.psnr_ssim_cell(summary["restored"])], \
        [reports.psnr_ssim_cell(summary["identity"])]
    if "restored_saturated" in summary:
        for label in ("saturated", "non_saturated"):
            columns.append(label.replace("_", "-"))
            cells_r.append(reports.psnr_ssim_cell(summary[f"restored_{label}"]))
            cells_i.append(reports.psnr_ssim_cell(summary[f"identity_{label}"]))
    notes = [f"PSNR / SSIM over {summary['restored']['count']} images; protocol "
             f"{summary['protocol']}: {summary['psnr']}; SSIM: {summary['ssim']}.",
             "identity = the blurry input scored as if it were the output (the floor)."]
    if summary.get("ecc_failures") or summary.get("identity_ecc_failures"):
        notes.append(f"ECC alignment failed on {summary['ecc_failures']} restored and "
                     f"{summary['identity_ecc_failures']} blurry images; those were scored "
                     "without alignment (per_image.csv: ecc_ok).")
    notes += _mean_notes(summary)
    if summary.get("saturation_split", "official lists") != "official lists":
        notes.append(f"saturated / non-saturated: {summary['saturation_split']}.")
    if summary.get("saturation_unlisted"):
        notes.append(f"{summary['saturation_unlisted']} images are in neither official "
                     "saturation list: in the first column's mean only (per_image.csv: saturated "
                     "empty).")
    if "abs_rel" in summary["restored"]:
        notes.append(f"depth (disparity aligned by scale and shift): AbsRel "
                     f"{summary['restored']['abs_rel']:.4f}, delta1 "
                     f"{summary['restored']['delta1']:.4f}.")
    methods = [(summary["model"] + (", adaptive exit" if "adaptive" in summary else ""),
                cells_r)]
    if "adaptive" in summary:
        a = summary["adaptive"]
        methods.append((f"{summary['model']}, all {a['sub_decoders']} sub-decoders",
                        [reports.psnr_ssim_cell(a["full_depth"])] + [""] * (len(columns) - 1)))
        notes.append(
            f"adaptive exit: {a['mean_sub_decoders']:.2f} of {a['sub_decoders']} sub-decoders "
            f"on average; {a['seconds']:.2f} s against {a['full_depth_seconds']:.2f} s with all "
            f"({100 * a['time_saved']:.1f}% saved, compilation left out), PSNR change "
            f"{a['psnr_change']:+.3f} dB.")
    extra = []
    if summary.get("tile"):
        extra.append(f"sliding windows {summary['tile']} px, overlap {summary['overlap']}")
    if summary.get("self_ensemble"):
        extra.append("x8 self-ensemble")
    notes.append("inference: " + (", ".join(extra) if extra else "full image") +
                 f"; {summary['seconds_total']:.1f} s on {summary['devices']} device(s).")
    return reports.summary_table(
        "Evaluation", columns, methods + [("identity (blurry input)", cells_i)], notes)


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
        _warn_unlisted([source.records[i].name for i in range(n)], saturation, log)
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
    summary = _summary(rows, config, loaded, spec, protocol, saturation, seconds)
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
