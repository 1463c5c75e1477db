"""DinoViT + key maps vs PyTorch: original layout (offset / antialias resize) and transformers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch_reference as tr  # noqa: E402
from conftest import rel_err  # noqa: E402

from radblur_jax.convert import keymaps  # noqa: E402
from radblur_jax.models.backends import resolve_backend  # noqa: E402
from radblur_jax.models.vit import DinoViT, swiglu_hidden  # noqa: E402

TOL = 1e-5
SIZES = [None, (224, 308), (126, 182)]  # None: the stored (native) grid


def _state_dict(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _images(seed: int, hw, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *hw, 3)).astype(np.float32)


def _run_flax(params, cfg, x):
    """The ViT with the backend training resolves here ("auto"; converted checkpoints run the
    default LAX form, checked against PyTorch by test_convert_cli)."""
    return jax.jit(DinoViT(cfg, resolve_backend()).apply)({"params": params}, jnp.asarray(x))


def _check(out, ref_taps, ref_cls, ref_last, hw, patch=14):
    h, w = hw[0] // patch, hw[1] // patch
    for got, want in zip(out.taps, ref_taps):
        assert rel_err(got, want.reshape(-1, h, w, want.shape[-1])) <= TOL
    for got, want in zip(out.cls_tokens, ref_cls):
        assert rel_err(got, want) <= TOL
    assert rel_err(out.last_hidden, ref_last) <= TOL


# ------------------------------------------------------------------ original layout


@pytest.mark.parametrize("kind", ["offset", "antialias_reg", "swiglu"])
def test_original_layout(kind):
    hidden = swiglu_hidden(64, 4.0) if kind == "swiglu" else None
    ref = tr.TorchDinoViT(registers=4 if kind == "antialias_reg" else 0,
                          swiglu=kind == "swiglu", hidden=hidden,
                          antialias=kind == "antialias_reg")
    tr.randomize_(ref.eval(), seed=1)
    params, cfg, dpt = keymaps.convert_state_dict("dinov2", _state_dict(ref))
    assert dpt is None and cfg.num_heads == 4 and cfg.taps == (0, 1, 2, 3)
    assert cfg.pos_embed_mode == ("antialias" if kind == "antialias_reg" else "offset")
    for i, size in enumerate(SIZES):
        hw = size or (70, 70)
        x = _images(10 + i, hw)
        with torch.no_grad():
            outs, last = ref.get_intermediate_layers(torch.from_numpy(x).permute(0, 3, 1, 2),
                                                     cfg.taps)
        out = _run_flax(params, cfg, x)
        _check(out, [o[0] for o in outs], [o[1] for o in outs], last, hw)


# ------------------------------------------------------------------ transformers


def _hf_model(registers: bool = False, swiglu: bool = False, width=(64, 4, 4), image_size=70):
    dim, depth, heads = width
    kw = dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
              image_size=image_size, patch_size=14, use_swiglu_ffn=swiglu)
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **kw))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    return tr.randomize_(model.eval(), seed=2)


def _hf_reference(model, x, taps, registers):
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True)
        normed = [model.layernorm(out.hidden_states[t + 1]) for t in taps]
    return [n[:, 1 + registers:] for n in normed], [n[:, 0] for n in normed], \
        out.last_hidden_state


def _hf_parity(model, registers, sizes, native, num_heads=None):
    params, cfg, _ = keymaps.convert_state_dict("dinov2_hf", _state_dict(model),
                                                num_heads=num_heads)
    assert cfg.pos_embed_mode == ("antialias" if registers else "size")
    for i, size in enumerate(sizes):
        hw = size or (native, native)
        x = _images(20 + i, hw)
        _check(_run_flax(params, cfg, x), *_hf_reference(model, x, cfg.taps, registers), hw)
    return params


@pytest.mark.parametrize("registers,swiglu", [(False, False), (True, False), (False, True)])
def test_hf_tiny(registers, swiglu):
    _hf_parity(_hf_model(registers, swiglu), 4 if registers else 0, SIZES, 70)


def test_hf_vits_width_native_grid():
    """Full ViT-S width and depth on the real 37x37 grid (518 px) plus one non-square size."""
    model = _hf_model(width=(384, 12, 6), image_size=518)
    params, cfg, _ = keymaps.convert_state_dict("dinov2_hf", _state_dict(model))
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.pos_grid) == (384, 12, 6, 37)
    assert cfg.taps == (2, 5, 8, 11)
    for i, hw in enumerate([(518, 518), (224, 308)]):
        x = _images(30 + i, hw, batch=1)
        _check(_run_flax(params, cfg, x), *_hf_reference(model, x, cfg.taps, 0), hw)


def _to_hub_naming(sd: dict) -> dict:
    """transformers v5 in-memory names -> the hub checkpoint names (attention.attention.query)."""
    out = {}
    for k, v in sd.items():
        for a, b in [("attention.q_proj", "attention.attention.query"),
                     ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"),
                     ("attention.o_proj", "attention.output.dense"),
                     ("mlp.down_proj", "mlp.weights_out")]:
            k = k.replace(a, b)
        if "mlp.gate_proj" in k:
            up = sd[k.replace("gate_proj", "up_proj")]
            k, v = k.replace("gate_proj", "weights_in"), np.concatenate([v, up], 0)
        elif "mlp.up_proj" in k:
            continue
        out[k] = v
    return out


def test_hf_hub_naming_matches():
    sd = _state_dict(_hf_model(swiglu=True))
    a, _, _ = keymaps.convert_state_dict("dinov2_hf", sd)
    b, _, _ = keymaps.convert_state_dict("dinov2_hf", _to_hub_naming(sd))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("name,registers", [("vits", 0), ("vitb", 4), ("vitl", 0), ("vitg", 4)])
def test_real_checkpoint_shapes(name, registers):
    """Key sets and shapes of the released checkpoints validate against the Flax model."""
    from radblur_jax.models import configs
    want = configs.encoder_config(name)
    hidden = swiglu_hidden(want.embed_dim, 4.0) if want.ffn == "swiglu" else 0
    sd = tr.original_state_shapes(want.embed_dim, want.depth, registers=registers,
                                  swiglu_hidden=hidden)
    cfg, dpt = keymaps.check_state_dict("dinov2", sd)
    assert dpt is None and cfg.num_registers == registers and cfg.pos_grid == 37
    for field in ("embed_dim", "depth", "num_heads", "ffn", "taps", "mlp_ratio"):
        assert cfg[field] == want[field], field
    assert cfg.pos_embed_mode == ("antialias" if registers else "offset")


# ------------------------------------------------------------------ errors and options


@pytest.fixture(scope="module")
def original_sd():
    return _state_dict(tr.randomize_(tr.TorchDinoViT(), seed=3))


def test_conversion_errors(original_sd):
    sd = dict(original_sd)
    del sd["blocks.1.attn.proj.weight"]
    with pytest.raises(keymaps.ConversionError, match="blocks_1/attn/proj/kernel"):
        keymaps.convert_state_dict("dinov2", sd)
    sd = dict(original_sd, **{"blocks.0.extra.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(keymaps.ConversionError, match=r"unexpected keys: blocks\.0\.extra"):
        keymaps.convert_state_dict("dinov2", sd)
    sd = dict(original_sd, **{"blocks.2.ls1.gamma": np.zeros((7,), np.float32)})
    with pytest.raises(keymaps.ConversionError, match=r"shape mismatch: blocks\.2\.ls1\.gamma"):
        keymaps.convert_state_dict("dinov2", sd)
    with pytest.raises(keymaps.ConversionError, match="unknown format"):
        keymaps.convert_state_dict("timm", original_sd)


def test_every_param_filled(original_sd):
    params, cfg, _ = keymaps.convert_state_dict("dinov2", original_sd)
    init = jax.jit(DinoViT(cfg).init)(jax.random.key(0), jnp.zeros((1, 70, 70, 3)))["params"]
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(params)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), init, params)
    assert all(jax.tree_util.tree_leaves(changed))


def test_bad_size_and_options(original_sd):
    params, cfg, _ = keymaps.convert_state_dict("dinov2", original_sd)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DinoViT(cfg).apply({"params": params}, jnp.zeros((1, 70, 71, 3)))
    x = _images(40, (70, 98), batch=1)
    base = _run_flax(params, cfg, x)
    cfg_remat = cfg.copy_and_resolve_references()
    cfg_remat.remat = True
    assert rel_err(_run_flax(params, cfg_remat, x).last_hidden, base.last_hidden) <= TOL
    cfg_bf16 = cfg.copy_and_resolve_references()
    cfg_bf16.dtype = "bfloat16"
    out = _run_flax(params, cfg_bf16, x)
    assert out.last_hidden.dtype == jnp.bfloat16
    assert rel_err(out.last_hidden.astype(jnp.float32), base.last_hidden) <= 5e-2
