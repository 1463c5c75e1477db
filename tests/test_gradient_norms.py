"""The gradient norms the train steps log (`steps.gradient_norms`): the total and one per
top-level part of the param tree, concatenated or per leaf (for sharded params)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radblur_jax.train import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grads() -> dict:
    rng = np.random.default_rng(0)
    leaf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
    return {"decoder": {"a": leaf(7, 5), "b": {"c": leaf(3)}},
            "depth": {"k": 1e-3 * leaf(4, 4, 2)},
            "exit_head": {"w": jnp.zeros((6, 2), jnp.float32)}}


@pytest.mark.parametrize("per_leaf", [False, True])
def test_norms_per_part_and_total(per_leaf):
    grads = _grads()
    got = jax.jit(lambda g: steps.gradient_norms(g, per_leaf=per_leaf))(grads)
    assert sorted(got) == ["grad_norm", "grad_norm/decoder", "grad_norm/depth",
                           "grad_norm/exit_head"]
    flat = {k: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)]).astype(np.float64)
            for k, v in grads.items()}
    for name, values in flat.items():
        np.testing.assert_allclose(got[f"grad_norm/{name}"], np.linalg.norm(values), rtol=1e-6)
    assert float(got["grad_norm/exit_head"]) == 0.0  # a part outside the loss reads zero
    np.testing.assert_allclose(got["grad_norm"],
                               np.linalg.norm(np.concatenate(list(flat.values()))), rtol=1e-6)


_SHARDED = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from radblur_jax.train import steps
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    rng = np.random.default_rng(1)
    grads = {"decoder": {"a": rng.normal(size=(64, 32)), "b": rng.normal(size=(16,))},
             "depth": {"k": rng.normal(size=(8, 128))}}
    spec = lambda x: P("fsdp") if x.ndim == 1 else P(None, "fsdp")
    grads = jax.tree.map(lambda x: jax.device_put(jnp.asarray(x, jnp.float32),
                                                  NamedSharding(mesh, spec(x))), grads)
    for per_leaf in (True, False):
        f = jax.jit(lambda g: steps.gradient_norms(g, per_leaf=per_leaf))
        hlo = f.lower(grads).compile().as_text()
        norms = {k: float(v) for k, v in f(grads).items()}
        print(json.dumps([per_leaf, hlo.count("all-gather"), norms]))
"""


@pytest.mark.slow
def test_per_leaf_norms_of_sharded_params_gather_nothing():
    """On 8 devices (data=4, fsdp=2) with every leaf sharded over `fsdp`, the per-leaf form
    reduces each shard where it lies (no all-gather in the compiled program) and gives the
    concatenated form's norms."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(_SHARDED)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {per_leaf: (gathers, norms) for per_leaf, gathers, norms
            in map(json.loads, run.stdout.splitlines())}
    assert rows[True][0] == 0, rows
    assert rows[False][0] > 0, rows  # the concatenation gathers: the shards are real
    for key, value in rows[False][1].items():
        assert rows[True][1][key] == pytest.approx(value, rel=1e-6), key
