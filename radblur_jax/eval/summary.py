"""The evaluation summary: means by protocol, RSBlur's saturation split, the markdown table.

`build_summary(rows, ...)` turns the runner's per-image rows into `summary.json`'s dict;
`summary_markdown(summary)` into `summary.md`. RSBlur's official saturated / non-saturated
lists come from `saturation_split(spec)`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from radblur_jax.data.image_io import DataError
from radblur_jax.data.sources import make_source
from radblur_jax.eval import protocols, reports
from radblur_jax.eval.loading import LoadedModel


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


def warn_unlisted(names: list[str], saturation: SaturationSplit,
                   log: Callable[[str], None]) -> list[str]:
    """Logs a warning naming the images in neither official list; returns them."""
    unlisted = [n for n in names if saturation.flag(n) is None]
    if unlisted:
        log(f"eval: WARNING: {len(unlisted)} of {len(names)} images are in neither RSBlur "
            f"saturation list (e.g. {', '.join(unlisted[:3])}); they count in the 'all' mean "
            "only, not in the saturated or non-saturated one (the official script stops here)")
    return unlisted


def build_summary(rows: list[dict], config: Any, loaded: LoadedModel, spec: dict,
                  protocol: str, saturation: SaturationSplit, seconds: float) -> dict:
    """The means of the per-image `rows` with what produced them (summary.json)."""
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
