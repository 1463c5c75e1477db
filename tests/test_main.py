"""`python -m radblur_jax.main`: bad input is one line on stderr, exit code 2, nothing written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import CONFIGS, load_config

REPO = os.path.dirname(CONFIGS)


def _main(workdir, *args, devices: int = 1):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "radblur_jax.main", "--workdir", str(workdir),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env)


def _one_line_exit_2(p) -> str:
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--config", "configs/deblur.py:nope"], "unknown preset 'nope'"),
    (["--config", "configs/deblur.py:tiny,steps=3"], "option 'steps=3'"),
    (["--config", "configs/nosuch.py"], "configs/nosuch.py"),
    (["--config", "configs/deblur.py:tiny", "--config.train.nosuch=1"], "nosuch"),
    (["--config", "configs/deblur.py:tiny", "--config.train.num_steps=0"],
     "--config.train.num_steps=0"),
    (["--config", "configs/depth_pretrain.py:tiny",
      "--config.model.decoder.depth_fusion=bogus"], "decoder.depth_fusion='bogus'"),
    (["--config", "configs/deblur.py:tiny", "--config.data.root=/nonexistent/x"],
     "/nonexistent/x"),
    (["--config", "configs/deblur.py:tiny", "--config.init.checkpoint=/no/such/dir"],
     "--config.init.checkpoint=/no/such/dir"),
    (["--config", "configs/deblur.py:tiny", "--config.optimizer.schedule=linear"],
     "optimizer.schedule='linear'"),
    (["--config", "configs/deblur.py:tiny", "--config.optimizer.accumulate_steps=0"],
     "--config.optimizer.accumulate_steps=0"),
    (["--config", "configs/deblur.py:tiny", "--config.mesh.data=3"], "config.mesh"),
    (["--config", "configs/deblur.py:tiny", "--config.input.crop_size=300"],
     "--config.input.crop_size=300"),
    (["--config", "configs/depth_pretrain.py:tiny", "--config.input.crop_size=120"],
     "--config.input.crop_size=120"),
    (["--config", "configs/depth_pretrain.py:tiny", "--config.data.name=synthetic"],
     "--config.data.name=synthetic"),
    (["--config", "configs/deblur.py:tiny", "--config.eval_data.jpeg=True"],
     "'synthetic' takes no option 'jpeg'"),
    (["--config", "configs/deblur.py:tiny", "--config.optimizer.freeze=('blocks_([',)"],
     "optimizer.freeze: 'blocks_([' is not a regex"),
    (["--config", "configs/deblur.py:tiny", "--config.optimizer.freeze=('^nothing/',)"],
     "--config.optimizer.freeze: '^nothing/' matches no parameter path"),
])
def test_bad_config_is_one_line_exit_2(args, needle, tmp_path):
    line = _one_line_exit_2(_main(tmp_path / "w", *args))
    assert needle in line and "Traceback" not in line
    assert os.listdir(tmp_path) == []


def test_batch_that_does_not_split_over_the_devices(tmp_path):
    line = _one_line_exit_2(_main(tmp_path / "w", "--config", "configs/deblur.py:tiny",
                                  "--config.train.batch_size=5", devices=2))
    assert "--config.train.batch_size=5" in line and "2 devices" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("config", ["configs/deblur.py:tiny", "configs/eval.py:tiny"])
def test_workdir_that_is_a_file(config, tmp_path):
    path = tmp_path / "file"
    path.write_text("keep")
    line = _one_line_exit_2(_main(path, "--config", config))
    assert f"--workdir={path}" in line and "not a directory" in line
    line = _one_line_exit_2(_main(path / "sub", "--config", config))
    assert f"--workdir={path / 'sub'}" in line
    assert os.listdir(tmp_path) == ["file"] and path.read_text() == "keep"


@pytest.mark.parametrize("filename,arg", [("deblur.py", "tiny"), ("deblur.py", "l"),
                                          ("depth_pretrain.py", "s"),
                                          ("depth_pretrain.py", "tiny")])
def test_config_contract(filename, arg):
    c = load_config(filename, arg)
    assert c.stage == ("deblur" if filename == "deblur.py" else "depth") and c.model.name == arg
    for field in ("num_steps", "batch_size", "log_every", "checkpoint_every", "eval_every"):
        assert isinstance(c.train[field], int)
    assert "name" in c.data and "name" in c.eval_data
    if c.stage == "depth":
        assert c.input.crop_size % 14 == 0


def test_validation_on_the_training_folder_is_warned(tmp_path):
    """paired_folder has no splits: the same root for data and eval_data is said, not silent.
    (The run stops at the mesh check that follows, before anything is written.)"""
    import numpy as np
    from PIL import Image
    root = tmp_path / "pairs"
    for sub in ("input", "target"):
        (root / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / sub / "a.png")
    p = _main(tmp_path / "w", "--config", "configs/deblur.py:tiny",
              "--config.data.name=paired_folder", f"--config.data.root={root}",
              "--config.eval_data.name=paired_folder", f"--config.eval_data.root={root}",
              "--config.mesh.data=3")
    assert p.returncode == 2 and "validation scores training images" in p.stderr, p.stderr
    assert not (tmp_path / "w").exists()
