"""The ablation's report: docs/results.md and its learning-curve PNG, built only from the runs'
saved results (OUT/plan.json, OUT/data/<mix>.json, each run's result.json), so rebuilding it
gives the same bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from radblur_jax.ablation import aggregate, plot
from radblur_jax.ablation.aggregate import BLUR_BINS, PAIRS, _fmt, paired, t_stat, verdict
from radblur_jax.ablation.measure import DEPTH_BINS
from radblur_jax.ablation.plan import Plan
from radblur_jax.atomic_io import write_bytes_atomic, write_json_atomic

COMMAND = "python tools/ablation.py --out workdir/ablation"


def check_plan_file(plan: Plan) -> None:
    """Writes OUT/plan.json on first use; later invocations must use the same settings."""
    path = plan.out / "plan.json"
    settings = plan.settings()
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings)
                             if saved.get(k) != settings.get(k))
            raise ValueError(f"its runs were made with other settings ({', '.join(changed)} "
                             f"differ from {path}); use another --out or the same settings")
        return
    plan.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _seed_values(by_seed: dict, key: str) -> list[float]:
    return [by_seed[s][key] for s in sorted(by_seed)]


def _depth_section(plan: Plan, depth: dict, flat: dict) -> list[str]:
    rows = []
    for mix in plan.mixes:
        runs = depth[mix.name]
        if not runs:
            continue
        for where in ("synthetic", "motorcycle"):
            cells = [mix.name, "synthetic test scenes" if where == "synthetic"
                     else "Middlebury motorcycle (skimage)",
                     *(f"{flat[mix.name][where][m]:.3f}" for m in ("abs_rel", "delta1"))]
            for branch in ("untrained", "stage_a"):
                for metric, digits in (("abs_rel", 3), ("delta1", 3)):
                    cells.append(_fmt([runs[s][branch][where][metric] for s in sorted(runs)],
                                      digits))
            rows.append(cells)
    return _table(["stage-A data", "evaluated on", "flat AbsRel", "flat delta1",
                   "untrained AbsRel", "untrained delta1",
                   "stage A AbsRel", "stage A delta1"], rows)


def _variant_rows(plan: Plan, deblur_mix: dict, keys: list[tuple[str, int]]) -> list[list[str]]:
    rows = []
    for v in plan.variants:
        runs = deblur_mix[v.name]
        if runs:
            rows.append([f"({v.name}) {v.about}", str(len(runs)),
                         *(_fmt(_seed_values(runs, k), d) for k, d in keys)])
    return rows


def _pair_rows(plan: Plan, deblur_mix: dict, keys: list[tuple[str, str]]) -> list[list[str]]:
    names = {v.name for v in plan.variants}
    rows = []
    for x, y, about in PAIRS:
        if not {x, y} <= names:
            continue
        for key, label in keys:
            d = paired(deblur_mix, x, y, key)
            if not d:
                continue
            per_seed = ", ".join(f"{v:+.3f}" for v in d)
            t = t_stat(d)
            rows.append([f"({x}) - ({y}): {about}", label, _fmt(d, 3), per_seed,
                         f"{t:.2f}" if np.isfinite(t) else "-", verdict(d)])
    return rows


def _mean_curve(runs: list[dict], xkey: str, ykey: str) -> tuple[list[float], list[float]]:
    xs = runs[0]["curve"][xkey]
    ys = np.mean([r["curve"][ykey][:len(xs)] for r in runs], axis=0)
    return list(xs), [float(y) for y in ys]


def _curves(plan: Plan, results: list[dict], png: str) -> None:
    """Per mix: stage B's validation PSNR and training loss per variant, stage A's validation
    AbsRel; each the mean over seeds."""
    panels = []
    for mix in plan.mixes:
        mine = [r for r in results if r["mix"] == mix.name]
        for key, title in (("val", "validation PSNR (dB, 128 px centre crops)"),
                           ("loss", "training loss (L1 + FFT)")):
            series = []
            for v in plan.variants:
                runs = [r for r in mine if r["variant"] == v.name]
                if runs:
                    series.append((f"({v.name}) {v.about}",
                                   *_mean_curve(runs, "val_step" if key == "val" else "step",
                                                key)))
            if series:
                panels.append((f"{mix.name}: {title}", "step", series))
        stage_a = [r for r in mine if r["variant"] is None]
        if stage_a:
            panels.append((f"{mix.name}: stage A validation AbsRel", "step",
                           [("stage A", *_mean_curve(stage_a, "val_step", "val"))]))
    plot.save_charts(png, panels, columns=3)


def build_markdown(plan: Plan, results: list[dict], mix_info: dict, png_name: str) -> str:
    data = aggregate.collect(plan, results)
    deblur, depth = data["deblur"], data["depth"]
    commits = sorted({r["commit"] for r in results})
    machines = sorted({r["machine"] for r in results})
    hours = sum(r["seconds"] for r in results) / 3600
    s = plan.settings()
    lines = [
        "# Does depth help? The RADBlur ablation",
        "",
        f"Written by `tools/ablation.py` from its runs; rebuild it with `{COMMAND} "
        "--report-only` (same bytes). Do not edit by hand.",
        "",
        f"- Runs: {len(results)} ({sum(r['variant'] is None for r in results)} stage A, "
        f"{sum(r['variant'] is not None for r in results)} stage B), "
        f"{hours:.2f} h in all on {'; '.join(machines)}.",
        f"- Code: commit {', '.join(commits)}.",
        f"- Stage A: `{s['stage_a_config']}` (random init, then the mix's sharp images and "
        "true depth). Stage B: "
        f"`{s['stage_b_config']}` for every variant; seeds {s['seeds']} (the seed sets "
        "the init, the data order and the crops; the test split is fixed).",
        "- Scores: the last sub-decoder's output, clipped and rounded to 8 bits, on the full "
        "256x256 test images (16 per mix) and on 24 real photographs blurred by camera shake "
        "(`tools/make_photo_shake_set.py`); PSNR in dB, SSIM 3-D (Gaussian window). "
        "Cells are mean ± sample standard deviation over seeds.",
        "",
        "## Data mixes",
        "",
    ]
    mix_rows = []
    for m in plan.mixes:
        info = mix_info[m.name]
        b = info["blur_by_depth"]
        mix_rows.append([m.name, m.about, f"{b['near']:.3f}", f"{b['far']:.3f}",
                         f"{b['ratio']:.2f}", f"{info['test_blurry_psnr']:.2f}"])
    lines += _table(["mix", "settings", "removed near", "removed far", "near/far",
                     "test blurry PSNR"], mix_rows)
    lines += ["Removed near / far: over the test pixels (luma, 2x2-averaged against noise), "
              "the nearest 30% and the farthest 30% by true depth; in each, the share of the "
              "sharp image's gradient energy the blur removes. Noise adds gradient energy, so "
              "a share near 0 means almost no blur there.", "",
              "## Stage A learns depth", "",
              "Against the same branch untrained (random weights of the run's seed) and the best "
              "constant prediction (flat). Scale and shift fitted per image in disparity; the "
              "motorcycle's true depth comes from its disparity and calibration, and the image "
              "is resized to 252x378.", ""]
    lines += _depth_section(plan, depth, {m: i["flat_depth"] for m, i in mix_info.items()})
    for mix in plan.mixes:
        dm = deblur[mix.name]
        lo, hi = data["blur_edges"].get(mix.name, (float("nan"),) * 2)
        lines += [f"## Mix `{mix.name}`", "", "Whole test images and real photographs:", ""]
        lines += _table(["variant", "seeds", "PSNR", "SSIM", "photos PSNR", "photos SSIM"],
                        _variant_rows(plan, dm, [("psnr", 2), ("ssim", 4), ("photo_psnr", 2),
                                                 ("photo_ssim", 4)]))
        lines += ["Per depth bin (per pixel, by relative disparity r = near / depth: far r < "
                  "1/3, middle, near r >= 2/3; PSNR of the pooled squared error):", ""]
        lines += _table(["variant", "seeds", *(f"{b} PSNR" for b, _, _ in DEPTH_BINS),
                         *(f"{b} SSIM" for b, _, _ in DEPTH_BINS)],
                        _variant_rows(plan, dm, [(f"{b}_psnr", 2) for b, _, _ in DEPTH_BINS]
                                      + [(f"{b}_ssim", 4) for b, _, _ in DEPTH_BINS]))
        lines += [f"Per blur strength (test images by their blurry PSNR: strong <= {lo:.2f} dB "
                  f"< medium <= {hi:.2f} dB < mild; mean PSNR of the restored images):", ""]
        lines += _table(["variant", "seeds", *(f"{b} blur" for b in BLUR_BINS)],
                        _variant_rows(plan, dm, [(f"blur_{b}_psnr", 2) for b in BLUR_BINS]))
        lines += ["How far the decoder's zero-initialised branches opened (RMS of their output "
                  "scales after training; each starts at 0): the depth fusion's and the NAF/FFT "
                  "blocks':", ""]
        lines += _table(["variant", "seeds", "fusion scale RMS", "block scale RMS"],
                        _variant_rows(plan, dm, [("fusion_scale", 4), ("block_scale", 4)]))
        lines += ["Paired differences (same seed), in dB; t over seeds, verdict at 5%:", ""]
        keys = [("psnr", "PSNR"), ("near_psnr", "near PSNR"), ("far_psnr", "far PSNR"),
                ("blur_strong_psnr", "strong-blur PSNR"), ("photo_psnr", "photos PSNR")]
        lines += _table(["difference", "score", "mean ± std", "per seed", "t", "verdict"],
                        _pair_rows(plan, dm, keys))
    lines += ["## Learning curves", "", "Means over seeds: stage B's validation PSNR and "
              "training loss per variant, and stage A's validation AbsRel, per mix.", "",
              f"![learning curves]({png_name})", ""]
    lines += conclusion(plan, deblur, depth)
    return "\n".join(lines).rstrip() + "\n"


def conclusion(plan: Plan, deblur: dict, depth: dict) -> list[str]:
    """The findings in words, from the same numbers as the tables."""
    out = ["## What it shows", ""]
    for mix in plan.mixes:
        dm = deblur[mix.name]
        if not (dm.get("c") and dm.get("a")):
            continue
        parts = []
        for key, where in (("psnr", "on the whole test images"), ("near_psnr", "in the near bin"),
                           ("far_psnr", "in the far bin"),
                           ("blur_strong_psnr", "on the most blurred third"),
                           ("photo_psnr", "on real photos")):
            d = paired(dm, "c", "a", key)
            mean = float(np.mean(d))
            parts.append(f"{mean:+.3f} dB {where} ({verdict(d)}, "
                         f"{sum(v > 0 for v in d)}/{len(d)} seeds positive)")
        out.append(f"- `{mix.name}`: (c) - (a) is " + "; ".join(parts) + ".")
        c = dm["c"]
        fusion = np.mean([c[s]["fusion_scale"] for s in c])
        blocks = np.mean([c[s]["block_scale"] for s in c])
        out.append(f"  In (c) the fusion's output scale (zero at init) ended at RMS {fusion:.4f}, "
                   f"the NAF/FFT blocks' at {blocks:.4f}.")
    for mix in plan.mixes:
        runs = depth[mix.name]
        if runs:
            seeds = sorted(runs)
            parts = []
            for where, name in (("synthetic", "the synthetic test scenes"),
                                ("motorcycle", "the motorcycle")):
                mean = {b: np.mean([runs[s][b][where]["abs_rel"] for s in seeds])
                        for b in ("untrained", "stage_a")}
                every = all(runs[s]["stage_a"][where]["abs_rel"]
                            < runs[s]["untrained"][where]["abs_rel"] for s in seeds)
                verdict_text = "lower with every seed" if every else "not lower with every seed"
                parts.append(f"on {name} {mean['stage_a']:.3f} against "
                             f"{mean['untrained']:.3f} ({verdict_text})")
            out.append(f"- Stage A on `{mix.name}`: AbsRel " + "; ".join(parts) + ".")
    for mix in plan.mixes:
        dm = deblur[mix.name]
        if dm.get("d") and dm.get("a"):
            d = paired(dm, "d", "a", "psnr")
            if verdict(d) == "identical":
                out.append(f"- `{mix.name}`: (d) and (a) restore identically with every seed: "
                           "with fusion off the depth branch feeds only the exit head (not "
                           "trained in these runs), so pretraining alone changes nothing and "
                           "(c) - (d) equals (c) - (a).")
            else:
                out.append(f"- `{mix.name}`: (d) - (a) is {np.mean(d):+.3f} dB "
                           f"({verdict(d)}).")
    out += ["", "At this scale (the `tiny` preset, a few hundred steps on a CPU) a null or "
            "small result says little about the full method; the next step is longer runs "
            "and the `s` preset with converted Depth Anything V2 weights on a GPU "
            "(`configs/depth_pretrain.py:s`, then `configs/deblur.py:s` with "
            "`--config.init.checkpoint`)."]
    return out


def write_report(plan: Plan, path: str) -> str:
    """Writes the report (markdown at `path`, curves as `<stem>_curves.png` beside it) from the
    finished runs; returns `path`."""
    from radblur_jax.ablation import runner
    results = runner.load_results(plan)
    info = runner.mix_info(plan)
    stem = Path(path).with_suffix("")
    png = f"{stem}_curves.png"
    if any(r["variant"] for r in results):
        _curves(plan, results, png)
    text = build_markdown(plan, results, info, os.path.basename(png))
    write_bytes_atomic(path, text.encode())
    return path
