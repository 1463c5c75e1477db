"""tools/convert_weights.py end to end: PyTorch file -> checkpoint dir -> load_pretrained -> parity.

Sources are random-weight PyTorch models saved as users get them: original-layout state dicts
(`torch.save`, safetensors) from tests/torch_reference.py, and transformers models written with
`save_pretrained` (safetensors) or as a `pytorch_model.bin` state dict.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest
import safetensors.torch as st
import torch
from conftest import rel_err, to_nchw
from convert_helpers import ROOT, TOL, images, one_line_error, run_tool

from radblur_jax.convert import (
    CheckpointError,
    convert_checkpoint,
    load_pretrained,
    read_converted_config,
)


@pytest.fixture(scope="module")
def torch_da():
    from torch_reference import TorchDepthAnything, randomize_
    return randomize_(TorchDepthAnything(), seed=1).eval()


@pytest.fixture(scope="module")
def da_pth(torch_da, tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "depth_anything_v2_tiny.pth"
    torch.save(torch_da.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def da_converted(da_pth, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "da"
    proc = run_tool("--input", da_pth, "--output", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "verified: " in proc.stdout
    return out, proc.stdout


def test_cli_depth_anything_pth_parity(torch_da, da_converted):
    out, stdout = da_converted
    assert "format=depth_anything" in stdout and "size=tiny" in stdout
    assert "pos-embed mode 'offset'" in stdout and "parameters" in stdout
    assert sorted(os.listdir(out)) == ["config.json", "conversion.json", "params"]
    info = json.loads((out / "conversion.json").read_text())
    n_torch = sum(p.numel() for k, p in torch_da.state_dict().items()
                  if not k.startswith("depth_head.scratch.refinenet4.resConfUnit1."))
    assert info["num_params"] == n_torch and info["format"] == "depth_anything"
    assert len(info["ignored_source_keys"]) == 4 and "ignored:  4 source tensors" in stdout
    assert info["num_source_keys"] == len(torch_da.state_dict())
    module, params, config = load_pretrained(out)
    assert config["model"] == "depth_anything" and type(module).__name__ == "DepthAnything"
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    for h, w in ((70, 70), (98, 84)):  # stored grid, then offset-0.1 interpolation
        x = images(h, w)
        got = jax.jit(module.apply)({"params": params}, x).disparity
        with torch.no_grad():
            want = torch_da(to_nchw(x))[0]
        assert rel_err(got, want) <= TOL, (h, w)


def test_dinov2_registers_safetensors_parity(tmp_path):
    from torch_reference import TorchDinoViT, randomize_
    model = randomize_(TorchDinoViT(registers=4, antialias=True), seed=2).eval()
    src = tmp_path / "dinov2_vit_reg.safetensors"
    st.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
    result = convert_checkpoint(src, tmp_path / "out")
    det = result.detection
    assert (det.format, det.size, det.num_registers, det.pos_embed_mode) == \
        ("dinov2", "tiny", 4, "antialias")
    module, params, config = load_pretrained(tmp_path / "out")
    assert config["model"] == "dinov2" and config["dpt"] is None
    for h, w in ((70, 70), (56, 84)):
        x = images(h, w, seed=3)
        got = jax.jit(module.apply)({"params": params}, x).last_hidden
        with torch.no_grad():
            want = model.get_intermediate_layers(to_nchw(x), (3,))[1]
        assert rel_err(got, want) <= TOL, (h, w)


def _hf_dinov2():
    from torch_reference import randomize_
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=70)
    return randomize_(Dinov2Model(cfg), seed=4).eval()


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_hf_dinov2_dir_parity(tmp_path, layout):
    model = _hf_dinov2()
    src = tmp_path / "hf"
    model.save_pretrained(src)
    if layout == "bin":  # the old transformers layout, in-memory (v5) key names
        os.remove(src / "model.safetensors")
        torch.save(model.state_dict(), src / "pytorch_model.bin")
    result = convert_checkpoint(src, tmp_path / "out")
    assert result.detection.format == "dinov2_hf"
    assert result.detection.encoder_cfg.num_heads == 2  # from config.json, not the width
    module, params, _ = load_pretrained(tmp_path / "out")
    x = images(70, 70, seed=5)
    with torch.no_grad():
        want = model(pixel_values=to_nchw(x)).last_hidden_state
    assert rel_err(jax.jit(module.apply)({"params": params}, x).last_hidden, want) <= TOL


def test_hf_depth_anything_dir_parity(tmp_path):
    from torch_reference import randomize_
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    # heads and taps differ from what the weights alone suggest: config.json must win
    backbone = Dinov2Config(hidden_size=64, num_hidden_layers=5, num_attention_heads=2,
                            image_size=70, out_indices=[2, 3, 4, 5], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64],
                              fusion_hidden_size=16, reassemble_hidden_size=64)
    model = randomize_(DepthAnythingForDepthEstimation(cfg), seed=6).eval()
    model.save_pretrained(tmp_path / "hf")
    result = convert_checkpoint(tmp_path / "hf", tmp_path / "out")
    enc = result.detection.encoder_cfg
    assert result.detection.format == "depth_anything_hf" and result.detection.size.startswith(
        "custom(D=64, depth=5, heads=2")
    assert tuple(enc.taps) == (1, 2, 3, 4) and enc.num_heads == 2
    module, params, _ = load_pretrained(tmp_path / "out")
    x = images(70, 70, seed=7)
    with torch.no_grad():
        want = model(pixel_values=to_nchw(x)).predicted_depth
    assert rel_err(jax.jit(module.apply)({"params": params}, x).disparity, want) <= TOL


# ------------------------------------------------------------------ bad inputs



def test_cli_truncated_file(da_pth, tmp_path):
    bad = tmp_path / "truncated.pth"
    data = da_pth.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    one_line_error(run_tool("--input", bad, "--output", out), bad, "truncated")
    assert not out.exists()


def test_other_network_and_unknown_format(tmp_path):
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
              "bn1.running_mean": torch.zeros(64),
              "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
              "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    src = tmp_path / "resnet50.pth"
    torch.save(resnet, src)
    out = tmp_path / "out"
    one_line_error(run_tool("--input", src, "--output", out), src, "bn1.running_mean",
                           "fc.weight")
    assert not out.exists()
    src2 = tmp_path / "mystery.safetensors"
    st.save_file({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, str(src2))
    with pytest.raises(CheckpointError, match=r"mystery\.safetensors.*encoder\.weight"):
        convert_checkpoint(src2, out)
    assert not out.exists()


def test_shape_mismatch_names_file_and_key(torch_da, tmp_path):
    sd = dict(torch_da.state_dict())
    sd["depth_head.projects.1.weight"] = torch.zeros(32, 64, 3, 3)
    src = tmp_path / "tampered.pth"
    torch.save(sd, src)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(src, out)
    assert "tampered.pth" in str(e.value) and "depth_head.projects.1.weight" in str(e.value)
    assert not out.exists() and os.listdir(tmp_path) == ["tampered.pth"]


def test_missing_key_names_it(torch_da, tmp_path):
    sd = {k: v for k, v in torch_da.state_dict().items() if k != "pretrained.blocks.2.ls1.gamma"}
    src = tmp_path / "partial.safetensors"
    st.save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
    with pytest.raises(CheckpointError, match=r"partial\.safetensors.*blocks_2/ls1/gamma"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(da_pth, da_converted, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="--overwrite"):
        convert_checkpoint(da_pth, out)
    assert os.listdir(out) == ["keep.txt"]
    convert_checkpoint(da_pth, out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "conversion.json", "params"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp or backup dirs left
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_checkpoint(da_pth, empty)
    assert read_converted_config(empty)["model"] == "depth_anything"


def test_failed_write_leaves_nothing(da_pth, tmp_path, monkeypatch):
    from radblur_jax.convert import checkpoint

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.json, "dump", boom)
    with pytest.raises(CheckpointError, match="disk full") as e:  # the tool prints it, exit 2
        convert_checkpoint(da_pth, tmp_path / "out")
    assert str(tmp_path / "out") in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_output_under_a_file_fails_before_converting(da_pth, tmp_path, monkeypatch):
    from radblur_jax.convert import checkpoint
    afile = tmp_path / "afile"
    afile.write_text("")
    for out in (afile / "out", afile / "a" / "out"):
        proc = run_tool("--input", da_pth, "--output", out)
        one_line_error(proc, out, afile)
        assert "Traceback" not in proc.stderr and "converted" not in proc.stdout

    def no_read(*a, **k):
        raise AssertionError("read the source before checking --output")

    monkeypatch.setattr(checkpoint, "load_checkpoint", no_read)
    with pytest.raises(CheckpointError, match="afile"):
        convert_checkpoint(da_pth, afile / "out")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_load_pretrained_rejects_other_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="not a converted radblur_jax checkpoint"):
        load_pretrained(tmp_path)
    (tmp_path / "params").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(CheckpointError, match="config.json: not a radblur_jax checkpoint"):
        load_pretrained(tmp_path)


def _torch_metric_da(max_depth: float):
    """Original-layout metric Depth Anything V2: the head ends in Sigmoid, times max_depth."""
    from torch_reference import TorchDepthAnything, randomize_

    class TorchMetricDA(TorchDepthAnything):
        def __init__(self):
            super().__init__()
            self.depth_head.scratch.output_conv2[3] = torch.nn.Sigmoid()

        def forward(self, x):
            ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
            outs, _ = self.pretrained.get_intermediate_layers(x, self.taps)
            depth, _ = self.depth_head([o[0] for o in outs], ph, pw)
            return (depth * max_depth).squeeze(1)

    return randomize_(TorchMetricDA(), seed=5).eval()


def test_metric_head_flag_converts_a_metric_pth(tmp_path):
    torch_metric = _torch_metric_da(20.0)
    src = tmp_path / "depth_anything_v2_metric_hypersim_tiny.pth"
    torch.save(torch_metric.state_dict(), src)
    out = tmp_path / "metric"
    proc = run_tool("--input", src, "--output", out, "--head", "metric", "--max-depth", "20")
    assert proc.returncode == 0, proc.stderr
    assert "head=metric (max_depth=20 m), given by --head" in proc.stdout
    info = json.loads((out / "conversion.json").read_text())
    assert (info["head"], info["max_depth"], info["head_source"]) == ("metric", 20.0, "given")
    module, params, config = load_pretrained(out)
    assert (config["dpt"]["head"], config["dpt"]["max_depth"]) == ("metric", 20.0)
    x = images(70, 84, seed=3)
    got = jax.jit(module.apply)({"params": params}, x).disparity
    with torch.no_grad():
        want = torch_metric(to_nchw(x))
    assert float(want.min()) >= 0.0 and float(want.max()) <= 20.0
    assert rel_err(got, want) <= TOL
    # Without --head, under a name that is not an official one, it converts as relative, and
    # both the printout and a warning block on stderr say it was assumed and how to change it.
    proc = run_tool("--input", src, "--output", tmp_path / "assumed")
    assert proc.returncode == 0, proc.stderr
    assert "head=relative, ASSUMED" in proc.stdout and "--head metric --max-depth" in proc.stdout
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING: ")]
    assert len(warning) >= 4 and "ASSUMED 'relative'" in proc.stderr, proc.stderr
    assert "--head metric --max-depth M" in proc.stderr and "--head relative" in proc.stderr
    info = json.loads((tmp_path / "assumed" / "conversion.json").read_text())
    assert (info["head"], info["head_source"]) == ("relative", "assumed")


@pytest.mark.parametrize("dataset,max_depth", [("hypersim", 20.0), ("vkitti", 80.0)])
def test_metric_head_from_official_file_name(tmp_path, dataset, max_depth):
    """An official metric file name gives the head and max depth; no warning."""
    torch_metric = _torch_metric_da(max_depth)
    src = tmp_path / f"depth_anything_v2_metric_{dataset}_vits.pth"  # tiny weights, official name
    torch.save(torch_metric.state_dict(), src)
    out = tmp_path / "metric"
    proc = run_tool("--input", src, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert f"head=metric (max_depth={max_depth:g} m), from the official Depth Anything V2 file " \
        "name" in proc.stdout, proc.stdout
    assert "WARNING" not in proc.stderr and "ASSUMED" not in proc.stdout, proc.stderr
    info = json.loads((out / "conversion.json").read_text())
    assert (info["head"], info["max_depth"], info["head_source"]) == \
        ("metric", max_depth, "filename")
    module, params, config = load_pretrained(out)
    assert (config["dpt"]["head"], config["dpt"]["max_depth"]) == ("metric", max_depth)
    x = images(70, 84, seed=3)
    with torch.no_grad():
        want = torch_metric(to_nchw(x))
    assert rel_err(jax.jit(module.apply)({"params": params}, x).disparity, want) <= TOL


def test_head_from_name_rules(da_pth, tmp_path):
    from radblur_jax.convert.detect import head_from_name
    assert head_from_name("/a/depth_anything_v2_metric_hypersim_vitl.pth") == ("metric", 20.0)
    assert head_from_name("depth_anything_v2_metric_vkitti_vitb.safetensors") == ("metric", 80.0)
    assert head_from_name("depth_anything_v2_vitb.pth") == ("relative", None)
    for other in ("depth_anything_v2_metric_nyu_vits.pth", "my_model.pth",
                  "depth_anything_v2_vitsmall.pth", "depth_anything_v2_tiny.pth"):
        assert head_from_name(other) is None, other
    # An official relative name: relative without the warning; --head still wins over a name.
    src = tmp_path / "depth_anything_v2_vits.pth"
    src.write_bytes(da_pth.read_bytes())
    det = convert_checkpoint(src, tmp_path / "rel").detection
    assert (det.dpt_cfg.head, det.head_source, det.assumption_warning()) == \
        ("relative", "filename", None)
    metric = tmp_path / "depth_anything_v2_metric_vkitti_vits.pth"
    metric.write_bytes(da_pth.read_bytes())
    det = convert_checkpoint(metric, tmp_path / "given", head="relative").detection
    assert (det.dpt_cfg.head, det.head_source) == ("relative", "given")


def test_head_flag_errors(da_pth, tmp_path):
    out = tmp_path / "out"
    for args, needle in ((("--head", "metric"), "--max-depth"),
                         (("--max-depth", "20"), "--max-depth"),
                         (("--head", "metric", "--max-depth", "-1"), "--max-depth")):
        proc = run_tool("--input", da_pth, "--output", out, *args)
        one_line_error(proc, da_pth, needle)  # names the file, as every error does
        assert not out.exists()
    with pytest.raises(CheckpointError, match=r"\.pth: head 'metric' needs max_depth"):
        convert_checkpoint(da_pth, out, head="metric")
    from torch_reference import TorchDinoViT
    vit = tmp_path / "vit.pth"
    torch.save(TorchDinoViT().state_dict(), vit)
    one_line_error(run_tool("--input", vit, "--output", out, "--head", "relative"),
                           vit, "--head")
    assert not out.exists()


def test_convert_is_reachable_from_the_package_lazily():
    code = ("import sys, radblur_jax; assert 'radblur_jax.convert' not in sys.modules; "
            "f = radblur_jax.convert.load_pretrained; print(f.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "radblur_jax.convert.checkpoint"
