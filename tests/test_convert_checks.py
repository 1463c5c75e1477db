"""What the converter refuses or flags instead of converting silently into another model:
checkpoints that lost blocks, guessed taps."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import safetensors.torch as st
import torch

from radblur_jax.convert import CheckpointError, convert_checkpoint, keymaps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "convert_weights.py")


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *needles) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def da_state():
    """A tiny original-layout Depth Anything V2 state dict (width 64: the `tiny` preset)."""
    from torch_reference import TorchDepthAnything, randomize_
    return dict(randomize_(TorchDepthAnything(), seed=1).state_dict())


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

