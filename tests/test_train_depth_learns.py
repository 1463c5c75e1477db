"""Stage A learns: a short tiny depth-pretraining run keeps its gradient alive and beats the
untrained branch (issue 21: the relative head's final ReLU used to clip every pixel within a few
dozen steps, after which the gradient was exactly zero)."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import load_config

from radblur_jax.train import input as input_lib
from radblur_jax.train import steps
from radblur_jax.train.depth_losses import depth_loss
from radblur_jax.train.loop import train_and_evaluate
from radblur_jax.train.tasks import make_task

STEPS = 120


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from radblur_jax.data.synthetic import SyntheticParams, write_dataset
    root = tmp_path_factory.mktemp("data") / "syn"
    write_dataset(root, 24, 4, SyntheticParams(height=64, width=64), seed=5, frames_per_scene=1)
    return str(root)


def _config(root: str):
    c = load_config("depth_pretrain.py", "tiny")
    c.data.root = c.eval_data.root = root
    c.input.crop_size = 56  # the images here are 64 px; the rest of the recipe as shipped
    c.train.num_steps = STEPS
    c.train.log_every = 10
    c.train.eval_every = STEPS
    c.train.checkpoint_every = STEPS
    c.checkpoint.async_save = False
    c.eval.use_ema = False  # an EMA (decay 0.99) of a short run stays close to the init
    c.eval.grid_images = 0
    return c


def _fixed_batches(config, split: str):
    """All images of `split`, centre-cropped to the patch multiple, as one batch each."""
    c = config.copy_and_resolve_references()
    c.eval_data.split = split
    c.eval.batch_size = 4
    batches = input_lib.eval_batches(c, ("image", "depth", "valid"), 14)
    return [{k: jnp.asarray(v) for k, v in b.items()} for b, _ in batches]


@pytest.mark.slow
def test_stage_a_tiny_learns(data_root, tmp_path):
    config = _config(data_root)
    task = make_task(config)
    model = task.model
    # The run's own initial params: train_and_evaluate splits key(seed) into (init, state) keys.
    params0 = task.load_initial_params(jax.random.split(jax.random.key(config.seed))[0])
    train_batches = _fixed_batches(config, "train")
    test_batches = _fixed_batches(config, "test")

    @jax.jit
    def probe(params, batch):
        x = steps.vit_normalize(batch["image"])
        disparity = model.apply({"params": params}, x, return_features=False).disparity
        loss = depth_loss(disparity, batch["depth"], batch["valid"],
                          grad_weight=float(config.loss.grad_weight), scales=config.loss.scales)
        return loss, disparity

    def mean_loss(params):
        return float(np.mean([probe(params, b)[0] for b in train_batches]))

    def mean_abs_rel(params):
        ev = jax.jit(lambda p, b: steps.depth_eval_step(p, b, model=model)["abs_rel"])
        return float(np.mean(np.concatenate([np.asarray(ev(params, b)) for b in test_batches])))

    state = train_and_evaluate(config, str(tmp_path / "a"))
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        recs = {r["step"]: r for r in map(json.loads, f)}

    # The gradient stays alive to the end (the collapsed head gave ~1e-9, then exactly 0), in
    # the DPT head and in the ViT behind it.
    for s in (STEPS - 10, STEPS):
        for key in ("grad_norm", "grad_norm/depth_head", "grad_norm/pretrained"):
            assert recs[s][key] > 0.05, (s, key, recs[s])
    # The loss on fixed training crops falls.
    loss0, loss1 = mean_loss(params0), mean_loss(state.params)
    assert loss1 < 0.97 * loss0, (loss0, loss1)
    # The predicted disparity varies within each image; the ReLU does not clip most pixels.
    disp = np.concatenate([np.asarray(probe(state.params, b)[1]) for b in test_batches])
    assert np.all(np.std(disp, axis=(1, 2)) > 1e-3 * np.mean(np.abs(disp), axis=(1, 2))), disp
    assert np.mean(disp == 0) < 0.9, np.mean(disp == 0)
    # Validation AbsRel (the loop's own) falls below the untrained branch's.
    untrained = mean_abs_rel(params0)
    assert recs[STEPS]["val_abs_rel"] == pytest.approx(mean_abs_rel(state.params), rel=1e-4)
    assert recs[STEPS]["val_abs_rel"] < untrained - 0.02, (untrained, recs[STEPS])
    assert os.path.isdir(tmp_path / "a" / "checkpoints")
