"""Stage B learns: a short tiny deblur run through the training loop (the tiny recipe on a
small synthetic set, 32 px crops) lowers its loss, keeps a gradient in every trained part of
the network, depth branch included (reached only through depth attention), raises the
validation PSNR, and its exit-head phase lowers the exit head's loss."""
from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import load_config

from radblur_jax.train.loop import train_and_evaluate

# One xdist worker runs the module (`--dist loadgroup`, .ci/run), so the training run, a module
# fixture, runs once rather than once per worker; test_bf16_tracking.py is in the group, as
# its float32 step is this run's gradient program (loaded from the compilation cache).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_deblur_runs")]

STEPS, EXIT_STEPS, LOG, EVAL = 100, 20, 10, 25


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[int, dict]:
    from radblur_jax.data.synthetic import SyntheticParams, write_dataset
    root = str(tmp_path_factory.mktemp("data") / "syn")
    write_dataset(root, 32, 4, SyntheticParams(height=64, width=64), seed=5, frames_per_scene=2)
    c = load_config("deblur.py", f"tiny,num_steps={STEPS},eval_every={EVAL},"
                                 f"exit_steps={EXIT_STEPS},eval_crop=0,crop_size=32")
    c.data.root = c.eval_data.root = root
    c.train.batch_size = 4
    c.train.log_every = LOG
    c.train.checkpoint_every = STEPS + EXIT_STEPS
    c.checkpoint.async_save = False
    c.checkpoint.keep_best = False
    c.eval.use_ema = False  # an EMA (decay 0.99) of a short run stays close to the init
    c.eval.grid_images = 0
    workdir = tmp_path_factory.mktemp("b")
    train_and_evaluate(c, str(workdir))
    with open(workdir / "metrics.jsonl") as f:
        return {r["step"]: r for r in map(json.loads, f)}


def test_stage_b_loss_falls_and_every_part_keeps_a_gradient(run):
    main = [run[s] for s in range(LOG, STEPS + 1, LOG)]
    losses = np.array([r["loss"] for r in main])
    assert np.all(np.isfinite(losses)), losses
    assert losses[-3:].mean() < 0.3 * losses[0], losses  # about a sixth on a CPU
    for r in main:
        # The exit head is frozen in the main phase and outside its loss.
        assert r["grad_norm/exit_head"] == 0.0, r
        for part in ("stem", "decoder"):  # bounds >= 30x below what a CPU run logs
            assert r[f"grad_norm/{part}"] > 1e-4, (part, r)
        # The depth branch's gradient comes through depth attention's zero-initialised output
        # scale: zero at the first steps, then alive to the end (a branch cut off from the
        # loss reads exactly zero).
        assert r["grad_norm/depth"] > 1e-7, r


def test_stage_b_validation_psnr_rises(run):
    val = [run[s]["val_psnr"] for s in range(EVAL, STEPS + 1, EVAL)]
    blurry = run[STEPS]["val_blurry_psnr"]
    assert val[-1] > val[0] + 1.0, val  # the run gains several dB from step 25 to 100
    # After 100 steps the restored images are about as close to sharp as the blurry inputs
    # (the 1300-step quick start gains ~1 dB over them).
    assert val[-1] > blurry - 1.0, (val, blurry)


def test_exit_phase_lowers_the_exit_loss(run):
    exit_logs = [run[s] for s in range(STEPS + LOG, STEPS + EXIT_STEPS + 1, LOG)]
    assert all("exit_accuracy" in r and r["grad_norm"] > 0 for r in exit_logs), exit_logs
    assert exit_logs[-1]["loss"] < exit_logs[0]["loss"], exit_logs
