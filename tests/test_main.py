"""`python -m radblur_jax.main`: bad configs are one clear line and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import CONFIGS, load_config

REPO = os.path.dirname(CONFIGS)


@pytest.mark.parametrize("args,needle", [
    (["--config", "configs/deblur.py:nope"], "unknown preset 'nope'"),
    (["--config", "configs/nosuch.py"], "configs/nosuch.py"),
    (["--config", "configs/deblur.py:tiny", "--config.train.nosuch=1"], "nosuch"),
    (["--config", "configs/deblur.py:tiny", "--config.train.num_steps=0"],
     "config.train.num_steps=0"),
    (["--config", "configs/depth_pretrain.py:tiny", "--config.model=huge"],
     "unknown model size 'huge'"),
    (["--config", "configs/deblur.py:tiny", "--config.data.root=/nonexistent/x"],
     "/nonexistent/x"),
])
def test_bad_config_is_one_line_exit_2(args, needle, tmp_path):
    p = subprocess.run([sys.executable, "-m", "radblur_jax.main", "--workdir",
                        str(tmp_path / "w"), *args], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"), timeout=600)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert needle in p.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("filename,arg", [("deblur.py", "tiny"), ("deblur.py", "l"),
                                          ("depth_pretrain.py", "s"),
                                          ("depth_pretrain.py", "tiny")])
def test_config_contract(filename, arg):
    c = load_config(filename, arg)
    assert c.stage == ("deblur" if filename == "deblur.py" else "depth") and c.model == arg
    for field in ("num_steps", "batch_size", "log_every", "checkpoint_every", "eval_every"):
        assert isinstance(c.train[field], int)
    assert "name" in c.data and "name" in c.eval_data
    if c.stage == "depth":
        assert c.input.crop_size % 14 == 0
