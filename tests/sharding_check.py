"""Runs RADBlur-tiny sharded over 8 simulated CPU devices and compares with one device.

Run as a script (it sets XLA_FLAGS before importing jax); prints the largest difference per
output, relative to max(1, max |output|), and exits 0 when all are <= 1e-5.
Used by tests/test_radblur.py in a subprocess.
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
from test_reversible import random_params  # noqa: E402

from radblur_jax.models.radblur import build_radblur  # noqa: E402


def main() -> int:
    assert jax.device_count() == 8, jax.devices()
    model = build_radblur("tiny")
    abstract = jax.eval_shape(lambda r: model.init(r, jnp.zeros((1, 32, 32, 3)))["params"],
                              jax.random.key(0))
    params = random_params(abstract, 0)
    blurry = jax.random.uniform(jax.random.key(1), (8, 30, 44, 3))
    forward = lambda p, x: model.apply({"params": p}, x)

    one = jax.devices()[0]
    single = jax.jit(forward)(jax.device_put(params, one), jax.device_put(blurry, one))

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    out_shardings = type(single)(NamedSharding(mesh, PartitionSpec(None, "data")), batch, batch)
    sharded_fn = jax.jit(forward, in_shardings=(replicated, batch), out_shardings=out_shardings)
    sharded = sharded_fn(jax.device_put(params, replicated), jax.device_put(blurry, batch))
    assert len(sharded.restored.sharding.device_set) == 8
    worst = 0.0
    for name, a, b in zip(single._fields, sharded, single):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))
        print(f"{name}: max |sharded - single| / max(1, max|single|) = {diff:.2e}")
        worst = max(worst, diff)
    print(f"devices={jax.device_count()} worst={worst:.2e}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
