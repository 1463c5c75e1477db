"""DepthAnything (ViT + DPT) and its key maps vs PyTorch: original DA V2 layout and transformers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import torch_reference as tr  # noqa: E402
from conftest import rel_err, to_nhwc  # noqa: E402

from radblur_jax.convert import keymaps  # noqa: E402
from radblur_jax.models.backends import resolve_backend  # noqa: E402
from radblur_jax.models.depth_anything import DepthAnything  # noqa: E402

TOL = 1e-5
SIZES = [(70, 70), (224, 308), (126, 182)]  # (70, 70): the stored 5x5 grid


def _state_dict(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _images(seed: int, hw) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, *hw, 3)).astype(np.float32)


def _run(params, enc, dpt, x):
    """The model with the backend training resolves here ("auto"; converted checkpoints run the
    default LAX form, checked against PyTorch by test_convert_cli)."""
    module = DepthAnything(enc, dpt, resolve_backend())
    return jax.jit(module.apply)({"params": params}, jnp.asarray(x))


def _check(out, depth, paths, tokens, hw):
    depth = depth.detach().numpy()
    assert (depth > 0).mean() > 0.05, "reference depth is (almost) all zero: test too weak"
    assert out.disparity.shape == depth.shape and out.disparity.dtype == jnp.float32
    assert rel_err(out.disparity, depth) <= TOL
    for got, want in zip(out.features, paths):
        assert rel_err(got, to_nhwc(want)) <= TOL
    h, w = hw[0] // 14, hw[1] // 14
    assert rel_err(out.tokens, tokens.reshape(-1, h, w, tokens.shape[-1])) <= TOL


@pytest.fixture(scope="module")
def original():
    ref = tr.randomize_(tr.TorchDepthAnything().eval(), seed=5)
    return ref, _state_dict(ref)


def test_original_layout(original):
    ref, sd = original
    assert any(k.startswith("depth_head.scratch.refinenet4.resConfUnit1.") for k in sd)
    params, enc, dpt = keymaps.convert_state_dict("depth_anything", sd)
    assert enc.pos_embed_mode == "offset" and enc.taps == (0, 1, 2, 3)
    assert dpt.features == 16 and tuple(dpt.out_channels) == (16, 32, 64, 64)
    for i, hw in enumerate(SIZES):
        x = _images(50 + i, hw)
        with torch.no_grad():
            depth, paths, tokens = ref(torch.from_numpy(x).permute(0, 3, 1, 2))
        _check(_run(params, enc, dpt, x), depth, paths, tokens, hw)


def _hf_model(metric: bool = False):
    backbone = transformers.Dinov2Config(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=70,
        out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = transformers.DepthAnythingConfig(
        backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=16,
        reassemble_hidden_size=64, depth_estimation_type="metric" if metric else "relative",
        max_depth=20 if metric else 1)
    return tr.randomize_(transformers.DepthAnythingForDepthEstimation(cfg).eval(), seed=6)


def _hf_reference(model, x):
    caught = {}
    hooks = [model.neck.register_forward_hook(lambda m, a, o: caught.__setitem__("neck", o)),
             model.backbone.register_forward_hook(lambda m, a, o: caught.__setitem__("bb", o))]
    with torch.no_grad():
        depth = model(torch.from_numpy(x).permute(0, 3, 1, 2)).predicted_depth
    for h in hooks:
        h.remove()
    return depth, caught["neck"], caught["bb"].feature_maps[-1][:, 1:]


@pytest.mark.parametrize("metric", [False, True])
def test_hf(metric):
    model = _hf_model(metric)
    params, enc, dpt = keymaps.convert_state_dict("depth_anything_hf", _state_dict(model))
    assert enc.pos_embed_mode == "size"
    if metric:
        dpt.head, dpt.max_depth = "metric", 20.0
    sizes = SIZES if not metric else SIZES[1:2]
    for i, hw in enumerate(sizes):
        x = _images(60 + i, hw)
        _check(_run(params, enc, dpt, x), *_hf_reference(model, x), hw)


@pytest.fixture(scope="module")
def hf_sd():
    return _state_dict(_hf_model())


def test_hf_keys_rename_to_original(original, hf_sd):
    """HF keys renamed to the original layout are exactly the original DA V2 keys."""
    hf = set(keymaps.to_original_keys("depth_anything_hf", hf_sd))
    orig = set(original[1])
    assert hf == orig


def test_errors_and_coverage(original, hf_sd):
    _, sd = original
    params, enc, dpt = keymaps.convert_state_dict("depth_anything", sd)
    shapes = jax.eval_shape(DepthAnything(enc, dpt).init, jax.random.key(0),
                            jnp.zeros((1, 70, 70, 3)))["params"]
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda s, a: s.shape == a.shape,
                                                         shapes, params))
    bad = dict(sd)
    del bad["depth_head.scratch.refinenet2.resConfUnit1.conv2.bias"]
    with pytest.raises(keymaps.ConversionError,
                       match="depth_head/scratch/refinenet2/resConfUnit1/conv2/bias"):
        keymaps.convert_state_dict("depth_anything", bad)
    bad = dict(sd, **{"depth_head.scratch.stem.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(keymaps.ConversionError, match=r"depth_head\.scratch\.stem\.weight"):
        keymaps.convert_state_dict("depth_anything", bad)
    bad = dict(sd, **{"depth_head.resize_layers.0.weight": np.zeros((16, 8, 4, 4), np.float32)})
    with pytest.raises(keymaps.ConversionError, match=r"shape mismatch: depth_head\.resize"):
        keymaps.convert_state_dict("depth_anything", bad)
    bad = dict(hf_sd, **{"neck.extra.weight": np.zeros(1, np.float32)})
    with pytest.raises(keymaps.ConversionError, match=r"unexpected keys.*neck\.extra\.weight"):
        keymaps.convert_state_dict("depth_anything_hf", bad)
    bad = {k: v for k, v in hf_sd.items() if "layer.2.attention.k_proj.weight" not in k}
    with pytest.raises(keymaps.ConversionError, match=r"incomplete fused.*blocks\.2\.attn\.qkv"):
        keymaps.convert_state_dict("depth_anything_hf", bad)


@pytest.mark.parametrize("name", ["vits", "vitb", "vitl", "vitg"])
def test_real_checkpoint_shapes(name):
    """Released DA V2 key sets and shapes validate against the Flax model; configs inferred."""
    from radblur_jax.models import configs
    from radblur_jax.models.vit import swiglu_hidden
    enc_want, dpt_want = configs.encoder_config(name), configs.dpt_config(name)
    hidden = swiglu_hidden(enc_want.embed_dim, 4.0) if enc_want.ffn == "swiglu" else 0
    sd = tr.original_state_shapes(enc_want.embed_dim, enc_want.depth, swiglu_hidden=hidden,
                                  dpt=(dpt_want.features, dpt_want.out_channels))
    enc, dpt = keymaps.check_state_dict("depth_anything", sd)
    assert (enc.embed_dim, enc.depth, enc.num_heads, enc.taps) == (
        enc_want.embed_dim, enc_want.depth, enc_want.num_heads, enc_want.taps)
    assert dpt.features == dpt_want.features
    assert tuple(dpt.out_channels) == tuple(dpt_want.out_channels)


def test_return_features_false(original):
    params, enc, dpt = keymaps.convert_state_dict("depth_anything", original[1])
    apply = jax.jit(DepthAnything(enc, dpt).apply, static_argnames="return_features")
    out = apply({"params": params}, jnp.zeros((1, 70, 84, 3)), return_features=False)
    assert out.features is None and out.disparity.shape == (1, 70, 84)
    assert out.tokens.shape == (1, 5, 6, 64)
