"""Recipes, the config check and the task registry (cheap: no compile, no data)."""
from __future__ import annotations

import dataclasses

import jax
import pytest
from train_helpers import load_config

from radblur_jax.train import config_base
from radblur_jax.train.tasks import TASKS, DeblurTask, DepthTask, make_task


def test_arg_options_change_recipe_fields():
    c = load_config("deblur.py", "s,num_steps=300,lr=5e-4,remat=true,compute_dtype=float32")
    assert (c.model.name, c.train.num_steps, c.optimizer.lr) == ("s", 300, 5e-4)
    assert c.model.encoder.remat is True and c.model.dtype == c.model.encoder.dtype == "float32"
    # The stem's remat is a deblur recipe field, on where memory is tight (b, l, g).
    assert load_config("deblur.py", "b").model.decoder.stem_remat is True
    assert load_config("deblur.py", "b,stem_remat=false").model.decoder.stem_remat is False
    assert load_config("deblur.py", "s").model.decoder.stem_remat is False
    default = load_config("deblur.py", "num_steps=7")
    assert default.model.name == "tiny" and default.train.num_steps == 7
    assert load_config("depth_pretrain.py").model.name == "tiny"  # one default preset


@pytest.mark.parametrize("arg,match", [("nope", "unknown preset 'nope'"),
                                       ("tiny,steps=3", "option 'steps=3'"),
                                       ("tiny,num_steps=x", "num_steps: 'x': expected int"),
                                       ("tiny,remat=maybe", "remat: 'maybe' is not a boolean")])
def test_bad_arg_names_the_part(arg, match):
    with pytest.raises(ValueError, match=match):
        load_config("deblur.py", arg)


def test_model_config_is_resolved_and_overridable():
    c = load_config("deblur.py", "tiny")
    c.lock()
    c.model.decoder.fft = False
    c.model.dtype = "bfloat16"  # one FieldReference drives the encoder's dtype
    assert c.model.encoder.dtype == "bfloat16"
    assert make_task(c).model.cfg.decoder.fft is False


def test_check_config_names_the_field(tmp_path):
    c = load_config("deblur.py", "tiny")
    config_base.check_config(c)
    for path, value, match in [
            ("model.decoder.depth_fusion", "bogus", "decoder.depth_fusion='bogus'"),
            ("init.checkpoint", str(tmp_path / "none"), "config.init.checkpoint=.*none: no such"),
            ("loss.pixel", "l3", "loss.pixel='l3'"),
            ("train.eval_every", -1, "config.train.eval_every=-1"),
            ("stage", "eval", "config.stage='eval'")]:
        bad = c.copy_and_resolve_references()
        *parents, key = path.split(".")
        node = bad
        for name in parents:
            node = node[name]
        node[key] = value
        with pytest.raises(ValueError, match=match):
            config_base.check_config(bad)


@pytest.mark.parametrize("steps,warmup,want", [(10, 50, 1), (4, 4, 0), (100, 50, None)])
def test_fit_warmup_clips_to_a_tenth_of_a_short_run(steps, warmup, want):
    c = load_config("deblur.py", "tiny")
    c.train.num_steps, c.optimizer.warmup_steps = steps, warmup
    note = config_base.fit_warmup(c)
    if want is None:
        assert note is None and c.optimizer.warmup_steps == warmup
    else:
        assert c.optimizer.warmup_steps == want
        assert note == (f"optimizer.warmup_steps={warmup} is not below train.num_steps={steps}: "
                        f"warmup clipped to {want} steps for this run")


def test_tasks_own_the_stage_parts():
    assert TASKS == {"deblur": DeblurTask, "depth": DepthTask}
    deblur = make_task(load_config("deblur.py", "tiny"))
    depth = make_task(load_config("depth_pretrain.py", "tiny"))
    assert deblur.fields == ("blur", "sharp") and deblur.best_metric == "val_psnr"
    assert depth.fields == ("image", "depth", "valid") and depth.best_metric is None
    assert (deblur.eval_multiple, depth.eval_multiple) == (1, 14)
    params = jax.eval_shape(deblur.init_params, jax.random.key(0))
    optimizers = deblur.make_optimizers(params)
    assert optimizers.exit is not None
    assert [(p.name, p.num_steps) for p in deblur.extra_phases(optimizers)] == [("exit_head", 50)]
    depth_params = jax.eval_shape(depth.init_params, jax.random.key(0))
    assert sorted(depth_params) == sorted(params["depth"])  # the tree RADBlur keeps in depth/
    assert depth.extra_phases(depth.make_optimizers(depth_params)) == []
    assert dataclasses.is_dataclass(config_base.Recipe)


def test_state_init_reuses_the_shape_inference_trace(monkeypatch):
    """A training start infers the params' shapes (`jax.eval_shape`), then jits the state init
    around `init_params`: the model's init is traced once for both."""
    task = make_task(load_config("deblur.py", "tiny"))
    module_type = type(task.model)
    traces = []
    original = module_type.init
    monkeypatch.setattr(module_type, "init",
                        lambda self, *a, **k: traces.append(1) or original(self, *a, **k))
    rng = jax.random.key(0)
    optimizers = task.make_optimizers(jax.eval_shape(task.init_params, rng))
    jax.jit(lambda r: task.create_state(task.init_params(r), optimizers, r)).trace(rng)
    assert len(traces) == 1


def test_stage_a_warns_of_gradient_matching_from_random_weights(tmp_path, caplog):
    """The tiny recipe (random weights) trains without gradient matching; a recipe with it and
    no init warns that the depth head can die."""
    config = load_config("depth_pretrain.py", "tiny")
    with caplog.at_level("WARNING"):
        config_base.check_config(config)
    assert config.loss.grad_weight == 0 and "grad_weight" not in caplog.text
    config = load_config("depth_pretrain.py", "s")
    with caplog.at_level("WARNING"):
        config_base.check_config(config)
    assert "config.loss.grad_weight=0.5 from random weights" in caplog.text
    caplog.clear()
    config.init.checkpoint = str(tmp_path)
    with caplog.at_level("WARNING"):
        config_base.check_config(config)
    assert "grad_weight" not in caplog.text
    config.loss.grad_weight = -1.0
    with pytest.raises(ValueError, match="config.loss.grad_weight=-1.0"):
        config_base.check_config(config)
