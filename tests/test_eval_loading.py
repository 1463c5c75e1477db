"""eval.loading: model + params from a training workdir or checkpoint step dir (EMA or raw)."""
from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from radblur_jax.eval import loading
from radblur_jax.models.configs import radblur_config
from radblur_jax.models.radblur import build_radblur
from radblur_jax.train import checkpointing


def _workdir(path: str, stage: str = "deblur"):
    """A training workdir with one checkpoint of RADBlur-tiny (FFT branch off, to tell the
    saved model config from the preset): distinct raw and EMA params."""
    model_cfg = radblur_config("tiny")
    model_cfg.decoder.fft = False
    checkpointing.save_config(path, ml_collections.ConfigDict(dict(stage=stage, model="tiny")),
                              model_cfg)
    raw = loading.sampled_params(build_radblur(model_cfg), seed=1)
    ema = jax.tree.map(lambda a: a * 0.5, raw)
    ckpts = checkpointing.Checkpoints(path, keep=2, keep_best=False, async_save=False,
                                      best_metric=None)
    it = iter(grain.MapDataset.range(8).batch(2).to_iter_dataset())
    ckpts.save(7, {"params": jax.tree.map(jnp.asarray, raw),
                   "ema_params": jax.tree.map(jnp.asarray, ema),
                   "step": jnp.asarray(7, jnp.int32)}, it)
    ckpts.wait()
    ckpts.close()
    return raw, ema


def _same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_loads_ema_and_raw_with_the_saved_model_config(tmp_path):
    raw, ema = _workdir(str(tmp_path))
    got = loading.load_trained(str(tmp_path))
    assert got.model.cfg.decoder.fft is False  # the checkpoint's model config, not the preset
    assert _same(got.params, ema) and "EMA" in got.description
    step_dir = os.path.join(str(tmp_path), "checkpoints", "7")
    got_raw = loading.load_trained(step_dir, use_ema=False, dtype="bfloat16")
    assert _same(got_raw.params, raw)
    assert got_raw.model.cfg.dtype == "bfloat16" and got_raw.model.cfg.decoder.fft is False


def test_errors_name_the_path(tmp_path):
    with pytest.raises(loading.CheckpointLoadError, match=str(tmp_path / "nothing")):
        loading.load_trained(str(tmp_path / "nothing"))
    _workdir(str(tmp_path / "depth"), stage="depth")
    with pytest.raises(loading.CheckpointLoadError, match="stage-'depth' checkpoint"):
        loading.load_trained(str(tmp_path / "depth"))


def test_sampled_params_match_init_shapes():
    model = build_radblur("tiny")
    params = loading.sampled_params(model)
    shapes = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)))["params"],
                            jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    assert all(p.shape == s.shape for p, s in zip(jax.tree.leaves(params),
                                                  jax.tree.leaves(shapes)))
    alphas = [v for k, v in params["decoder"]["sub_decoders"].items() if k.startswith("alpha")]
    assert alphas and all(np.all(a == 0.5) for a in alphas)


def test_with_dtype_copies():
    cfg = radblur_config("tiny")
    bf = loading.with_dtype(cfg, "bfloat16")
    assert bf.dtype == bf.encoder.dtype == "bfloat16"
    assert cfg.dtype == cfg.encoder.dtype == "float32"
    assert loading.with_dtype(cfg, None).dtype == "float32"
    assert build_radblur(bf).cfg.dtype == "bfloat16"
