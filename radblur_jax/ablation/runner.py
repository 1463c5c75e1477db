"""Runs the ablation's jobs in order, each measured as soon as it finishes, and resumes.

A job is done when its `result.json` exists (written atomically after training and measuring);
a rerun skips those, and a job killed mid-training resumes from its workdir's last checkpoint,
because the training command is the same. Progress and an ETA go to stdout (one line per job).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from radblur_jax.ablation import measure
from radblur_jax.ablation.plan import DATA_SEED, NUM_TEST, NUM_TRAIN, Mix, Plan, Variant
from radblur_jax.atomic_io import write_json_atomic

RESULT = "result.json"


@dataclasses.dataclass(frozen=True)
class Job:
    mix: Mix
    seed: int
    variant: Variant | None  # None: the mix's stage-A run for this seed

    @property
    def label(self) -> str:
        return f"{self.mix.name}/{self.variant.name if self.variant else 'stage_a'}/seed{self.seed}"


def jobs(plan: Plan) -> list[Job]:
    """Seed by seed (so an early stop leaves whole seeds), each mix's stage A before its
    stage-B variants."""
    out = []
    for seed in plan.seeds:
        for mix in plan.mixes:
            out.append(Job(mix, seed, None))
            out.extend(Job(mix, seed, v) for v in plan.variants)
    return out


def workdir(plan: Plan, job: Job) -> Path:
    return (plan.stage_a_dir(job.mix, job.seed) if job.variant is None
            else plan.stage_b_dir(job.mix, job.variant, job.seed))


def command(plan: Plan, job: Job) -> list[str]:
    return (plan.stage_a_command(job.mix, job.seed) if job.variant is None
            else plan.stage_b_command(job.mix, job.variant, job.seed))


def source_commit() -> str:
    """`git describe`-like id of the checkout running the study (`+dirty` if modified)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty.strip() else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), JAX CPU backend"


def prepare_data(plan: Plan) -> None:
    """Generates the mixes' sets and the real-photo set (once each)."""
    from radblur_jax.data.synthetic.photo_shake import write_photo_shake_set
    from radblur_jax.data.synthetic.writer import write_dataset
    for mix in plan.mixes:
        root = plan.data_root(mix)
        if root and not Path(root).is_dir():
            print(f"generating the {mix.name} mix in {root}", flush=True)
            write_dataset(root, NUM_TRAIN, NUM_TEST, plan.mix_params(mix), DATA_SEED,
                          frames_per_scene=8, workers=1)
    if not photo_root(plan).is_dir():
        write_photo_shake_set(photo_root(plan))


MIX_KEYS = ("blur_by_depth", "test_pairs", "test_blurry_psnr", "flat_depth")


def mix_info(plan: Plan) -> dict[str, dict]:
    """Per mix: how its blur depends on depth (`measure.blur_by_depth`), the test split's size
    and blurry PSNR, and the flat-prediction depth floor (`measure.flat_depth_scores`);
    computed from the data once and kept in OUT/data/<mix>.json."""
    from radblur_jax.models.configs import radblur_config
    patch = int(radblur_config("tiny").encoder.patch_size)
    info = {}
    for mix in plan.mixes:
        cache = plan.out / "data" / f"{mix.name}.json"
        saved = json.loads(cache.read_text()) if cache.is_file() else {}
        if not all(k in saved for k in MIX_KEYS):
            pairs, _ = measure.test_pairs(plan.data_root(mix))
            blurry = [10 * np.log10(1 / np.mean((p["blur"].astype(np.float64) - p["sharp"]) ** 2))
                      for p in pairs]
            saved = {"blur_by_depth": measure.blur_by_depth(pairs), "test_pairs": len(pairs),
                     "test_blurry_psnr": float(np.mean(blurry)),
                     "flat_depth": measure.flat_depth_scores(pairs, patch)}
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache, saved)
        info[mix.name] = saved
    return info


def photo_root(plan: Plan) -> Path:
    return plan.out / "data" / "photo_shake"


def measure_job(plan: Plan, job: Job) -> dict:
    """The job's measurements (see `measure`), plus its learning curve."""
    wd = str(workdir(plan, job))
    pairs, near = measure.test_pairs(plan.data_root(job.mix))
    if job.variant is None:
        scores = {}
        for name, src in (("untrained", None), ("stage_a", wd)):
            model, params, patch = measure.depth_branch(src, job.seed)
            predict = measure.depth_predict_fn(model, params)
            scores[name] = {"synthetic": measure.synthetic_depth_scores(predict, pairs, patch),
                            "motorcycle": measure.motorcycle_scores(predict)}
        return {"depth": scores, "curve": measure.learning_curve(wd)}
    restore, params = measure.deblur_restore_fn(wd)
    return {"images": measure.score_restorations(restore, pairs, near),
            "residual_scales": measure.residual_scales(params),
            "photos": measure.score_photos(restore, measure.photo_pairs(str(photo_root(plan)))),
            "curve": measure.learning_curve(wd)}


def run_job(plan: Plan, job: Job) -> dict:
    """Trains (or resumes) the job's run, measures it and writes its result.json."""
    wd = workdir(plan, job)
    wd.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(wd / "train.log", "a") as log:
        proc = subprocess.run(command(plan, job), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{job.label}: training exited with {proc.returncode}; see "
                           f"{wd / 'train.log'}")
    trained = time.time() - start
    result = {"job": job.label, "mix": job.mix.name, "seed": job.seed,
              "variant": job.variant.name if job.variant else None,
              "command": [os.path.relpath(a) if os.path.isabs(a) else a
                          for a in command(plan, job)[1:]],
              "commit": source_commit(), "machine": machine(),
              "train_seconds": round(trained, 1), **measure_job(plan, job)}
    result["seconds"] = round(time.time() - start, 1)
    write_json_atomic(wd / RESULT, result)
    return result


def complete_results(plan: Plan) -> None:
    """Adds what a finished stage-B result of an earlier version lacks (`residual_scales`),
    from its checkpoint."""
    from radblur_jax.workdir import load_params_for_inference
    for job in jobs(plan):
        path = workdir(plan, job) / RESULT
        if job.variant is None or not path.is_file():
            continue
        result = json.loads(path.read_text())
        if "residual_scales" not in result:
            _, params = load_params_for_inference(str(workdir(plan, job)))
            result["residual_scales"] = measure.residual_scales(params)
            write_json_atomic(path, result)


def load_results(plan: Plan) -> list[dict]:
    """The finished jobs' results, in job order."""
    out = []
    for job in jobs(plan):
        path = workdir(plan, job) / RESULT
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def run_all(plan: Plan) -> None:
    """Every unfinished job, with one progress line each (elapsed, ETA from the mean job time
    of each kind so far in this invocation)."""
    todo = [j for j in jobs(plan) if not (workdir(plan, j) / RESULT).is_file()]
    total = len(jobs(plan))
    done_before = total - len(todo)
    print(f"{total} runs, {done_before} finished before, {len(todo)} to go", flush=True)
    times: dict[bool, list[float]] = {True: [], False: []}
    start = time.time()
    for k, job in enumerate(todo):
        t0 = time.time()
        run_job(plan, job)
        times[job.variant is None].append(time.time() - t0)
        left = todo[k + 1:]
        mean = {kind: (np.mean(v) if v else np.mean(times[not kind] or [0.0]))
                for kind, v in times.items()}
        eta = sum(mean[j.variant is None] for j in left)
        print(f"[{done_before + k + 1}/{total}] {job.label}: {time.time() - t0:.0f} s; "
              f"elapsed {(time.time() - start) / 60:.1f} min, ETA {eta / 60:.1f} min",
              flush=True)
    if not todo:
        print("all runs finished; rebuilding the report", flush=True)
    sys.stdout.flush()
