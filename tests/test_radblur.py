"""The assembled RADBlur: shapes and cropping, the zero-init ADA gate, splicing, exit, sharding."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.eval.adaptive_exit import adaptive_exit_for, deblur_adaptive, exit_depth
from radblur_jax.models.configs import radblur_config, radblur_names
from radblur_jax.models.layers import region_bilinear_matrix
from radblur_jax.models.radblur import build_radblur, init_radblur
from radblur_jax.train.losses import deblur_loss
from radblur_jax.train.pretrained import splice_depth_params


def _without_ada(params: dict) -> dict:
    """The params of the depth_fusion="none" model: ADA and depth projections dropped."""
    dec = {k: v for k, v in params["decoder"].items() if not k.startswith("depth_proj")}
    dec["sub_decoders"] = {k: v for k, v in dec["sub_decoders"].items() if not k.startswith("ada")}
    return {**params, "decoder": dec}


@pytest.fixture(scope="module")
def tiny():
    model = build_radblur("tiny")
    return model, init_radblur(model, jax.random.key(0),
                               compiler_options=init_compiler_options())


def test_presets():
    assert radblur_names() == ("tiny", "s", "b", "l", "g")
    cfg = radblur_config("l")
    assert (cfg.encoder.embed_dim, cfg.decoder.num_sub_decoders) == (1024, 8)
    assert radblur_config("tiny").encoder.depth == 4
    with pytest.raises(ValueError, match="unknown model size 'xl'"):
        radblur_config("xl")


def test_output_shapes_any_size_and_zero_init_ada(tiny):
    model, params = tiny
    blurry = jax.random.uniform(jax.random.key(1), (2, 30, 44, 3))
    out = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, blurry)
    assert out.restored.shape == (2, 2, 30, 44, 3)
    assert out.disparity.shape == (2, 30, 44) and out.exit_logits.shape == (2, 6)
    assert 1e-4 < float(jnp.abs(out.restored - blurry).mean()) < 0.5  # head starts small
    cfg = radblur_config("tiny")
    cfg.decoder.depth_fusion = "none"
    plain = build_radblur(cfg)
    out_none = jax.jit(lambda p, x: plain.apply({"params": p}, x))(_without_ada(params), blurry)
    np.testing.assert_array_equal(out_none.restored, out.restored)


def test_ada_matters_after_one_optimiser_step(tiny):
    model, params = tiny
    cfg = radblur_config("tiny")
    cfg.decoder.depth_fusion = "none"
    plain = build_radblur(cfg)
    blurry = jax.random.uniform(jax.random.key(2), (1, 32, 32, 3))
    sharp = jnp.clip(blurry + 0.1, 0, 1)
    tx = optax.adam(1e-3)

    @jax.jit
    def step_and_compare(p):
        # A step of the decoder (where ADA is): its gradient alone keeps the encoder's
        # backward out of the program.
        loss = lambda dec: deblur_loss(
            model.apply({"params": {**p, "decoder": dec}}, blurry).restored, sharp)
        updates, _ = tx.update(jax.grad(loss)(p["decoder"]), tx.init(p["decoder"]))
        p = {**p, "decoder": optax.apply_updates(p["decoder"], updates)}
        with_ada = model.apply({"params": p}, blurry).restored
        without = plain.apply({"params": _without_ada(p)}, blurry).restored
        return p, jnp.abs(with_ada - without).max()

    new, diff = step_and_compare(params)
    scale = new["decoder"]["sub_decoders"]["ada_3"]["scale"]
    assert float(jnp.abs(scale).max()) > 5e-4  # the zero-init gate moved
    assert float(diff) > 1e-6


def test_splice_depth_params(tiny):
    _, params = tiny
    ones = jax.tree_util.tree_map(jnp.ones_like, params["depth"])
    spliced = splice_depth_params(params, ones)
    assert all(float(x.min()) == 1.0 for x in jax.tree_util.tree_leaves(spliced["depth"]))
    assert spliced["decoder"] is params["decoder"]
    vit_only = splice_depth_params(params, ones["pretrained"])
    assert float(vit_only["depth"]["depth_head"]["scratch"]["output_conv2_2"]["bias"][0]) == \
        float(params["depth"]["depth_head"]["scratch"]["output_conv2_2"]["bias"][0])
    bad = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape + (1,)), ones["pretrained"])
    with pytest.raises(ValueError, match="shapes/keys differ"):
        splice_depth_params(params, bad)


def test_exit_depth_and_resampling_matrix():
    assert [exit_depth(c, 8, 6) for c in range(6)] == [8, 7, 6, 4, 3, 2]
    assert [exit_depth(c, 2, 6) for c in range(6)] == [2, 2, 2, 1, 1, 1]
    np.testing.assert_allclose(region_bilinear_matrix(5, 5, 2.0, 2.0), np.eye(5))
    # features with 3.5-px pixels onto a 2-px grid: centre 1.0 -> source 1/3.5 - 0.5 -> clamp 0
    mat = region_bilinear_matrix(4, 7, 3.5, 2.0)
    np.testing.assert_allclose(mat.sum(1), 1.0)
    np.testing.assert_allclose(mat[3], [0, 1 - (7 / 3.5 - 0.5 - 1), 7 / 3.5 - 0.5 - 1, 0])


@pytest.mark.slow
def test_sharded_over_8_devices_matches_one_device():
    """Outputs within 1e-5 of one device's; the sharded forward, the CPU's blocked attention,
    FFTs on a batch split over one of two mesh axes and the data-parallel train step move no
    activations between devices (tests/sharding_check.py)."""
    script = os.path.join(os.path.dirname(__file__), "sharding_check.py")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "devices=8" in run.stdout and run.stdout.count("activation collectives none") == 4


@pytest.mark.slow
def test_deblur_adaptive_runs_the_predicted_prefix(tiny):
    model, params = tiny
    blurry = jax.random.uniform(jax.random.key(3), (1, 28, 36, 3))
    image, n = deblur_adaptive(model, params, blurry)
    full = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, blurry)
    assert image.shape == (1, 28, 36, 3) and n in (1, 2)
    np.testing.assert_allclose(image, full.restored[n - 1], rtol=1e-5, atol=1e-5)


def test_adaptive_exit_builds_its_jits_once_per_model(tiny):
    model, _ = tiny
    runner = adaptive_exit_for(model)
    assert adaptive_exit_for(model) is runner  # cached: no new jax.jit per call
    assert adaptive_exit_for(build_radblur("tiny")) is not runner


def test_one_size_table_feeds_every_reader():
    from radblur_jax.convert import detect, keymaps
    from radblur_jax.models import configs
    from radblur_jax.train import losses
    assert detect.SIZE_NAMES == configs.dinov2_names() == ("tiny", "vits", "vitb", "vitl", "vitg")
    for name in configs.radblur_names():
        cfg = radblur_config(name)
        assert cfg.encoder.num_heads == keymaps.configs.heads_for_width(cfg.encoder.embed_dim)
        assert tuple(cfg.encoder.taps) == keymaps.default_taps(cfg.encoder.depth)
        assert tuple(cfg.exit.psnr_edges) == losses.PSNR_EDGES
        assert cfg.encoder.patch_size == configs.PATCH_SIZE
    assert radblur_config("vitl").to_dict() == radblur_config("l").to_dict()


@pytest.mark.parametrize("field,value,needle", [
    ("decoder.depth_fusion", "depth", "decoder.depth_fusion='depth'"),
    ("vit_input", "crop", "vit_input='crop'"),
    ("dtype", "float64", "dtype='float64'"),
    ("dpt.head", "absolute", "dpt.head='absolute'"),
])
def test_config_switches_validated_once_with_the_field_name(field, value, needle):
    cfg = radblur_config("tiny")
    section, _, key = field.rpartition(".")
    (cfg[section] if section else cfg)[key] = value
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        build_radblur(cfg)


def test_dtype_is_one_field():
    cfg = radblur_config("tiny")
    cfg.dtype = "bfloat16"
    assert cfg.encoder.dtype == "bfloat16"


def test_models_import_nothing_above_them():
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1] / "radblur_jax" / "models"
    upward = re.compile(r"^\s*(from|import)\s+radblur_jax\.(train|eval|convert|data)\b", re.M)
    offenders = [p.name for p in root.glob("*.py") if upward.search(p.read_text())]
    assert offenders == []


def test_bfloat16_forward_stays_close_to_float32():
    """cfg.dtype = "bfloat16": same float32 params, every module computes in bf16.

    Measured on 3 random-parameter draws (gains non-zero, so every branch contributes), 30x44:
    restored 1.3e-2..1.4e-2, disparity 1.0e-2..4.4e-2, exit logits 3e-3..7e-3 relative error
    against float32 (bf16 keeps 8 mantissa bits, eps 7.8e-3). Bounds: about 3x that. The lower
    bounds show the bf16 path really ran.
    """
    from conftest import rel_err
    from test_reversible import random_params
    f32 = build_radblur("tiny")
    cfg = radblur_config("tiny")
    cfg.dtype = "bfloat16"
    bf16 = build_radblur(cfg)
    blurry = jax.random.uniform(jax.random.key(5), (1, 30, 44, 3))
    params = random_params(jax.eval_shape(lambda r: f32.init(r, blurry)["params"],
                                          jax.random.key(0)), 0)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    want = jax.jit(lambda p, x: f32.apply({"params": p}, x))(params, blurry)
    got = jax.jit(lambda p, x: bf16.apply({"params": p}, x))(params, blurry)
    assert all(x.dtype == jnp.float32 for x in got)
    assert 1e-4 < rel_err(got.restored, want.restored) <= 0.05
    assert 1e-4 < rel_err(got.disparity, want.disparity) <= 0.12
    assert 1e-5 < rel_err(got.exit_logits, want.exit_logits) <= 0.03
