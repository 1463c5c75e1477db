"""Reading PyTorch state dicts (pth, safetensors, HF dirs) and detecting their format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch as st
import torch

from radblur_jax.convert import detect
from radblur_jax.convert.readers import CheckpointError, load_checkpoint, load_state_dict


@pytest.fixture()
def tensors():
    g = torch.Generator().manual_seed(0)
    return {"blocks.0.attn.qkv.weight": torch.randn(6, 2, generator=g).to(torch.bfloat16),
            "norm.weight": torch.randn(2, generator=g).to(torch.float16),
            "pos_embed": torch.randn(1, 5, 2, generator=g),
            "steps": torch.tensor([3], dtype=torch.int64)}


def _expected(tensors):
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in tensors.items()}


def _assert_same(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == (np.float32 if want[k].dtype.kind == "f" else want[k].dtype), k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix", "nested"])
def test_torch_file_unwraps_and_casts(tmp_path, tensors, wrap):
    obj = {
        "plain": tensors,
        "model": {"model": tensors, "epoch": 3},
        "state_dict": {"state_dict": tensors, "optimizer": {"lr": 0.1}},
        "module_prefix": {f"module.{k}": v for k, v in tensors.items()},
        "nested": {"model": {"state_dict": {f"module.{k}": v for k, v in tensors.items()}}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    _assert_same(load_state_dict(path), _expected(tensors))


def test_safetensors_bf16_without_torch_reader(tmp_path, tensors):
    path = tmp_path / "w.safetensors"
    st.save_file(tensors, str(path))
    _assert_same(load_state_dict(path), _expected(tensors))


def test_hf_dir_sharded_safetensors_and_bin(tmp_path, tensors):
    exp = _expected(tensors)
    names = sorted(tensors)
    for kind, suffix in (("safetensors", "safetensors"), ("bin", "bin")):
        d = tmp_path / kind
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
        weight_map = {}
        for i, part in enumerate((names[:2], names[2:])):
            shard = f"model-0000{i + 1}-of-00002.{suffix}"
            sub = {k: tensors[k] for k in part}
            if kind == "safetensors":
                st.save_file(sub, str(d / shard))
            else:
                torch.save(sub, d / shard)
            weight_map.update({k: shard for k in part})
        index = "model.safetensors.index.json" if kind == "safetensors" \
            else "pytorch_model.bin.index.json"
        (d / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        loaded = load_checkpoint(d)
        assert loaded.hf_config == {"model_type": "dinov2"}
        _assert_same(loaded.state_dict, exp)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_one_clear_error(tmp_path, tensors, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(tensors, path)
    else:
        st.save_file(tensors, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_state_dict(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value)
    assert "\n" not in str(e.value)


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "obj": _Custom()}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*weights-only") as e:
        load_state_dict(path)
    # The unpickler's reason survives, on the one line: which global it refused.
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert "WeightsUnpickler error: Unsupported global: GLOBAL" in msg, msg
    assert "_Custom" in msg and "weights_only set to `False`" not in msg, msg


class _Custom:
    pass


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_state_dict(tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"w\.npz.*unknown checkpoint file type"):
        load_state_dict(tmp_path / "w.npz")
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_state_dict(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="without weights"):
        load_state_dict(tmp_path / "d")


# ------------------------------------------------------------------ format detection

def _vit_keys(prefix="", regs=False):
    keys = [f"{prefix}{k}" for k in ("cls_token", "pos_embed", "mask_token",
                                     "patch_embed.proj.weight", "patch_embed.proj.bias",
                                     "blocks.0.attn.qkv.weight", "norm.weight")]
    return keys + ([f"{prefix}register_tokens"] if regs else [])


def _hf_models():
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )
    kw = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=28)
    backbone = Dinov2Config(**kw, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    return {
        "dinov2_hf": Dinov2Model(Dinov2Config(**kw)),
        "dinov2_hf_reg": Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw)),
        "depth_anything_hf": DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=16,
            reassemble_hidden_size=64)),
    }


def test_detect_all_formats(tmp_path):
    cases = {
        "dinov2": _vit_keys(),
        "dinov2 (registers)": _vit_keys(regs=True),
        "depth_anything": _vit_keys("pretrained.") + ["depth_head.projects.0.weight"],
    }
    for name, keys in cases.items():
        assert detect.detect_format(dict.fromkeys(keys)) == name.split()[0]
    for name, model in _hf_models().items():
        # both the in-memory (v5) names and the names written to disk
        model.save_pretrained(tmp_path / name)
        for sd in (model.state_dict(), load_state_dict(tmp_path / name)):
            assert detect.detect_format(sd) == name.replace("_reg", "")


def test_detect_rejects_other_networks():
    resnet = {k: None for k in ("conv1.weight", "bn1.weight", "bn1.running_mean",
                                "layer1.0.conv1.weight", "fc.weight", "fc.bias")}
    with pytest.raises(detect.UnknownFormatError) as e:
        detect.detect_format(resnet, "resnet50.pth")
    msg = str(e.value)
    assert msg.startswith("resnet50.pth:") and "bn1.running_mean" in msg and "conv1.weight" in msg
    with pytest.raises(detect.UnknownFormatError, match="partial Depth Anything"):
        detect.detect_format(dict.fromkeys(_vit_keys("pretrained.")), "x.pth")


def test_forced_format_must_match():
    keys = dict.fromkeys(_vit_keys())
    assert detect.check_format("dinov2", keys, "a.pth") == "dinov2"
    with pytest.raises(detect.UnknownFormatError, match="a.pth.*depth_anything_hf"):
        detect.check_format("depth_anything_hf", keys, "a.pth")
    with pytest.raises(CheckpointError, match="unknown format"):
        detect.check_format("onnx", keys, "a.pth")


def test_size_names():
    from radblur_jax.models import configs
    for name in detect.SIZE_NAMES:
        assert detect.size_name(configs.encoder_config(name)) == name
    cfg = configs.encoder_config("vits")
    cfg.embed_dim = 96
    assert detect.size_name(cfg).startswith("custom(D=96")


def test_default_pos_embed_mode():
    assert detect.default_pos_embed_mode("dinov2", 0) == "offset"
    assert detect.default_pos_embed_mode("dinov2", 4) == "antialias"
    assert detect.default_pos_embed_mode("depth_anything_hf", 0) == "size"
    # transformers' Dinov2WithRegisters resizes with antialias=True, as the original _reg models
    assert detect.default_pos_embed_mode("dinov2_hf", 4) == "antialias"
    from radblur_jax.convert import keymaps
    sd = {k: v.detach().numpy() for k, v in _hf_models()["dinov2_hf_reg"].state_dict().items()}
    enc, _ = keymaps.check_state_dict("dinov2_hf", sd)
    assert enc.pos_embed_mode == detect.default_pos_embed_mode("dinov2_hf", 4)


def test_without_torch(tmp_path, tensors, monkeypatch):
    st.save_file(tensors, str(tmp_path / "w.safetensors"))
    torch.save(tensors, tmp_path / "w.pth")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), _expected(tensors))
    with pytest.raises(CheckpointError, match=r"w\.pth: reading a PyTorch pickle needs torch"):
        load_state_dict(tmp_path / "w.pth")
