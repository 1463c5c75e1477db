"""Export: jax.export of inference (fixed size, any batch), reloaded without the model code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.eval import export

H, W = 24, 40

_RELOAD = textwrap.dedent("""
    import sys
    class _Block:  # make any import of this package fail: only jax + flax.serialization
        def find_spec(self, name, path=None, target=None):
            if name == "radblur_jax" or name.startswith("radblur_jax."):
                raise ImportError("model code is blocked in this test: " + name)
    sys.meta_path.insert(0, _Block())
    import jax, jax.numpy as jnp, numpy as np
    from flax import serialization
    d = sys.argv[1]
    exported = jax.export.deserialize(bytearray(open(d + "/inference.jaxexport", "rb").read()))
    params = serialization.msgpack_restore(open(d + "/params.msgpack", "rb").read())
    x = np.load(d + "/x.npy")
    for b in (1, 3):
        restored, disparity = exported.call(params, jnp.asarray(x[:b]))
        np.save(d + f"/restored_{b}.npy", np.asarray(restored))
        np.save(d + f"/disparity_{b}.npy", np.asarray(disparity))
    print("ok")
""")


@pytest.mark.slow
def test_export_reload_without_model_code(tmp_path):
    out = tmp_path / "exported"
    assert export.main(["--random-init", "tiny", "--height", str(H), "--width", str(W),
                        "--output", str(out)]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert meta["height"] == H and meta["width"] == W and meta["platforms"] == ["cpu"]
    x = np.random.default_rng(0).random((3, H, W, 3)).astype(np.float32)
    np.save(out / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", _RELOAD, str(out)], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # The same function run directly through the model code.
    import jax

    from radblur_jax.eval.inference import restore_fn
    from radblur_jax.eval.loading import load_random
    loaded = load_random("tiny")
    want_r, want_d = jax.jit(restore_fn(loaded.model))(loaded.params, x)
    for b in (1, 3):
        got_r = np.load(out / f"restored_{b}.npy")
        got_d = np.load(out / f"disparity_{b}.npy")
        assert got_r.shape == (b, H, W, 3) and got_d.shape == (b, H, W)
        assert rel_err(got_r, np.asarray(want_r)[:b]) < 1e-5
        assert rel_err(got_d, np.asarray(want_d)[:b]) < 1e-5


def _one_line_exit(capsys, argv, *needles):
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert str(needle) in err[0], (needle, err[0])


def test_export_cli_errors(tmp_path, capsys):
    out = tmp_path / "out"
    _one_line_exit(capsys, ["--random-init", "tiny", "--height", "0", "--width", "8",
                            "--output", str(out)], "--height")
    _one_line_exit(capsys, ["--random-init", "tiny", "--height", "8", "--width", "8",
                            "--output", str(out), "--platforms", "cpu,metal"], "metal")
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    for target in (taken, taken / "sub"):
        _one_line_exit(capsys, ["--random-init", "tiny", "--height", "8", "--width", "8",
                                "--output", str(target)], "--output", taken)
    assert taken.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["taken.txt"]
