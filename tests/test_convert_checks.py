"""What the converter refuses or flags instead of converting silently into another model:
checkpoints that lost blocks, guessed taps, a transformers head's output scale, Depth Anything
V1 files; and the tool's exit status."""
from __future__ import annotations

import json

import jax
import pytest
import safetensors.torch as st
import torch
from conftest import rel_err, to_nchw
from convert_helpers import TOL, TOOL, images, one_line_error, run_tool

from radblur_jax.convert import CheckpointError, convert_checkpoint, keymaps, load_pretrained


@pytest.fixture(scope="module")
def da_state():
    """A tiny original-layout Depth Anything V2 state dict (width 64: the `tiny` preset)."""
    from torch_reference import TorchDepthAnything, randomize_
    return dict(randomize_(TorchDepthAnything(), seed=1).state_dict())


@pytest.fixture(scope="module")
def da_pth(da_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "depth_anything_v2_tiny.pth"
    torch.save(da_state, path)
    return path


# ------------------------------------------------------------------ depth and taps


def test_missing_last_block_is_refused(da_state, tmp_path):
    """Without its last block a known-width file used to convert as a 3-block ViT with other
    taps; the size table's depth is required and the first missing block is named."""
    sd = {k: v for k, v in da_state.items() if not k.startswith("pretrained.blocks.3.")}
    src = tmp_path / "cut.pth"
    torch.save(sd, src)
    out = tmp_path / "out"
    line = one_line_error(run_tool("--input", src, "--output", out), src,
                          "missing keys: pretrained.blocks.3.*")
    assert "width 64 has 4 blocks" in line
    assert not out.exists()
    sd = {k: v for k, v in sd.items() if not k.startswith("pretrained.blocks.2.")}
    with pytest.raises(keymaps.ConversionError, match=r"missing keys: pretrained\.blocks\.2\.\*"):
        keymaps.convert_state_dict("depth_anything", sd)  # the first missing one


def test_integer_weights_are_refused(da_state, tmp_path):
    """Integer tensors where the model has float weights (a quantized file) were cast to
    float32 and converted into another model; they are refused by name."""
    key = "pretrained.blocks.1.attn.qkv.weight"
    sd = dict(da_state)
    sd[key] = (sd[key] * 100).to(torch.int8)
    src = tmp_path / "quantized.pth"
    torch.save(sd, src)
    out = tmp_path / "out"
    line = one_line_error(run_tool("--input", src, "--output", out), src,
                          f"{key} (int8)")
    assert "not floating point" in line
    assert not out.exists()
    with pytest.raises(keymaps.ConversionError, match=r"blocks\.1\.attn\.qkv\.weight \(int8\)"):
        keymaps.convert_state_dict("depth_anything", {k: v.numpy() for k, v in sd.items()})
    keymaps.convert_state_dict("depth_anything", {  # bfloat16 is floating point
        k: v.to(torch.bfloat16).float().numpy().astype(jax.numpy.bfloat16)
        for k, v in da_state.items()})


def test_missing_last_layer_of_a_transformers_model(tmp_path):
    """A transformers directory states its depth (num_hidden_layers): that is required too."""
    from torch_reference import randomize_
    from transformers import Dinov2Config, Dinov2Model
    model = randomize_(Dinov2Model(Dinov2Config(
        hidden_size=96, num_hidden_layers=3, num_attention_heads=2, image_size=70)), seed=3)
    model.save_pretrained(tmp_path / "hf")
    sd = st.load_file(tmp_path / "hf" / "model.safetensors")
    st.save_file({k: v for k, v in sd.items() if ".layer.2." not in k},
                 tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"blocks\.2\.\* \(encoder\.layer\.2\.\*\).*"
                                              r"num_hidden_layers=3"):
        convert_checkpoint(tmp_path / "hf", tmp_path / "out")


def test_unknown_width_converts_with_guessed_taps(tmp_path):
    from torch_reference import TorchDinoViT, randomize_
    vit = randomize_(TorchDinoViT(dim=96, depth=8, heads=1), seed=2).eval()
    src = tmp_path / "vit96.pth"
    torch.save(vit.state_dict(), src)
    out = tmp_path / "out"
    proc = run_tool("--input", src, "--output", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "depth=8" in proc.stdout and "taps=(1, 3, 5, 7) GUESSED" in proc.stdout
    assert "WARNING: taps=(1, 3, 5, 7) GUESSED" in proc.stderr, proc.stderr
    assert "verified: " in proc.stdout
    info = json.loads((out / "conversion.json").read_text())
    assert info["taps_source"] == "guessed"


def test_taps_source_recorded(da_state, tmp_path):
    src = tmp_path / "da.safetensors"
    st.save_file({k: v.contiguous() for k, v in da_state.items()}, str(src))
    result = convert_checkpoint(src, tmp_path / "out")
    assert result.detection.taps_source == "table"
    assert "GUESSED" not in result.detection.taps_summary()
    info = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert info["taps_source"] == "table"



# ------------------------------------------------------------------ transformers head



def _hf_depth_anything(tmp_path, **head_kw):
    """A tiny random transformers Depth Anything saved as a model directory."""
    from torch_reference import randomize_
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    backbone = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                            image_size=70, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64],
                              fusion_hidden_size=16, reassemble_hidden_size=64, **head_kw)
    model = randomize_(DepthAnythingForDepthEstimation(cfg), seed=8).eval()
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def _edit_config(path, **fields):
    cfg = json.loads((path / "config.json").read_text())
    for key, value in fields.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def _parity(model, out) -> float:
    module, params, _ = load_pretrained(out)
    x = images(70, 84, seed=9)
    with torch.no_grad():
        want = model(pixel_values=to_nchw(x)).predicted_depth
    assert float(want.abs().max()) > 0
    return rel_err(jax.jit(module.apply)({"params": params}, x).disparity, want)


def test_relative_head_max_depth_is_carried(tmp_path):
    """transformers multiplies a RELATIVE head's output by max_depth too; the factor is folded
    into the last convolution (relu is positively homogeneous), so the outputs agree."""
    model, src = _hf_depth_anything(tmp_path, depth_estimation_type="relative", max_depth=5)
    out = tmp_path / "out"
    proc = run_tool("--input", src, "--output", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "head=relative, detected from the transformers config.json; output x5" in proc.stdout
    assert "verified: " in proc.stdout
    info = json.loads((out / "conversion.json").read_text())
    assert (info["head"], info["relative_output_scale"]) == ("relative", 5.0)
    assert _parity(model, out) <= TOL


def test_metric_transformers_dir(tmp_path):
    model, src = _hf_depth_anything(tmp_path, depth_estimation_type="metric", max_depth=20)
    result = convert_checkpoint(src, tmp_path / "out")
    assert result.detection.head_summary() == \
        "head=metric (max_depth=20 m), detected from the transformers config.json"
    info = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert (info["head"], info["max_depth"], info["relative_output_scale"]) == \
        ("metric", 20.0, 1.0)
    assert _parity(model, tmp_path / "out") <= TOL


@pytest.mark.parametrize("kind,value", [("relative", 0), ("relative", -2), ("relative", "far"),
                                        ("metric", "far")])
def test_head_scale_not_positive_is_refused(tmp_path, kind, value):
    _, src = _hf_depth_anything(tmp_path, depth_estimation_type=kind)
    _edit_config(src, max_depth=value)
    out = tmp_path / "out"
    one_line_error(run_tool("--input", src, "--output", out), src / "config.json",
                   f"max_depth={value!r}", *(["no output scale"] if kind == "relative" else []))
    assert not out.exists()


def test_missing_depth_estimation_type_is_transformers_default(tmp_path):
    """No depth_estimation_type: transformers builds a relative head, so no ASSUMED warning."""
    model, src = _hf_depth_anything(tmp_path)
    _edit_config(src, depth_estimation_type=None, max_depth=None)
    out = tmp_path / "out"
    proc = run_tool("--input", src, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ASSUMED" not in proc.stdout, proc.stderr
    assert "head=relative, transformers' default: its config.json has no " \
        "depth_estimation_type" in proc.stdout, proc.stdout
    info = json.loads((out / "conversion.json").read_text())
    assert (info["head"], info["head_source"], info["relative_output_scale"]) == \
        ("relative", "hf_default", 1.0)
    assert _parity(model, out) <= TOL


# ------------------------------------------------------------------ refusals, exit status


def test_depth_anything_v1_names_are_refused(da_pth, tmp_path):
    """V1 files have V2's keys but other taps: refused by their official names, not converted."""
    for name in ("depth_anything_vits14.pth", "depth_anything_vitl14.pth"):
        src = tmp_path / name
        src.write_bytes(da_pth.read_bytes())
        out = tmp_path / "out"
        proc = run_tool("--input", src, "--output", out)
        one_line_error(proc, src, "V1 is not supported", "V2")
        assert not out.exists()
    src = tmp_path / "depth_anything_vitb14.safetensors"
    with pytest.raises(CheckpointError, match="V1 is not supported"):
        convert_checkpoint(src, tmp_path / "out")  # by name, before the file is read


def test_verify_failure_is_a_one_line_error_exit_2(da_pth, tmp_path, monkeypatch, capsys):
    """A --verify mismatch exits 2 like every other failure, one line naming the output."""
    import importlib.util

    import radblur_jax.convert as convert
    spec = importlib.util.spec_from_file_location("convert_weights_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    real = convert.load_pretrained

    def tampered(path):
        module, params, config = real(path)
        params = jax.tree.map(lambda a: a, params)
        params["pretrained"]["norm"]["bias"] = params["pretrained"]["norm"]["bias"] + 1.0
        return module, params, config

    monkeypatch.setattr(convert, "load_pretrained", tampered)
    out = tmp_path / "out"
    argv = ["--input", str(da_pth), "--output", str(out), "--head", "relative", "--verify"]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}: reloaded parameters differ"), err
    assert "['pretrained']['norm']['bias']" in err[0] and "left for inspection" in err[0]


def test_depth_cli_text_names_both_heads():
    """The depth CLI writes what the converted head predicts: disparity (relative) or metres
    (metric); its help and docstring say both, not "disparity" alone."""
    from radblur_jax import depth
    parser = depth.build_parser()
    for text in (depth.__doc__, parser.description):
        assert "larger = nearer" in text and "metres" in text and "larger = farther" in text
    assert "metres for a metric model" in " ".join(parser.format_help().split())
