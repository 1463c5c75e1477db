"""Runs RADBlur-tiny sharded over 8 simulated CPU devices and compares with one device.

Run as a script (it sets XLA_FLAGS before importing jax); prints the largest difference per
output, relative to max(1, max |output|), and the collectives of the batch-sharded forward, of
the CPU's blocked attention, of FFTs on a batch split over one of two mesh axes and of the
data-parallel train step's gradient program; exits 0
when the outputs agree within 1e-5 and no program moves activations between devices (no
all-gather, all-to-all or collective-permute: only the gradients' all-reduce). Used by
tests/test_radblur.py in a subprocess.
"""
from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402
from test_reversible import random_params  # noqa: E402
from train_helpers import load_config  # noqa: E402

from radblur_jax.models.attention_ops import attention  # noqa: E402
from radblur_jax.models.radblur import build_radblur  # noqa: E402
from radblur_jax.models.spmd import batchwise, on_mesh  # noqa: E402
from radblur_jax.train import sharding  # noqa: E402
from radblur_jax.train.tasks import make_task  # noqa: E402

# Collectives that move activations; an all-reduce (of gradients, of a loss) is expected.
MOVERS = ("all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def movers(hlo: str) -> dict[str, int]:
    return {k: hlo.count(f" {k}(") for k in MOVERS if f" {k}(" in hlo}


def fft_shapes(hlo: str) -> set[tuple[int, ...]]:
    """The result shape of every FFT in an optimized HLO text."""
    return {tuple(map(int, m.split(","))) for m in
            re.findall(r"= \w+\[([\d,]+)\]\{[\d,]*\} fft\(", hlo)}


def per_device(hlo: str, local_batch: int, name: str) -> bool:
    """Prints the program's activation collectives and FFT shapes; True when there are none of
    the first and every FFT transforms each device's part of the batch. An FFT op's shape is
    `(..., B, C, h, w)`: the transformed axes last, the examples fourth from the end (the
    loss's FFT has the K outputs before them)."""
    moved, ffts = movers(hlo), fft_shapes(hlo)
    print(f"{name}: activation collectives {moved or 'none'}; FFT shapes {sorted(ffts)}")
    return not moved and bool(ffts) and all(s[-4] == local_batch for s in ffts)


def blocked_attention_check(mesh) -> bool:
    """The CPU's blocked attention on a sharded batch whose heads take several loop steps:
    no activation collectives, and the output of XLA's attention within 1e-5."""
    batch = NamedSharding(mesh, PartitionSpec("data"))
    q, k, v = (jax.device_put(jax.random.normal(jax.random.key(i), (8, 300, 4, 16)), batch)
               for i in range(3))
    fn = jax.jit(on_mesh(mesh, lambda q, k, v: attention(q, k, v, "blocked")),
                 in_shardings=(batch,) * 3, out_shardings=batch)
    compiled = fn.lower(q, k, v).compile()
    moved = movers(compiled.as_text())
    want = np.asarray(attention(*map(np.asarray, (q, k, v)), "xla"), np.float64)
    err = float(np.linalg.norm(np.asarray(compiled(q, k, v)) - want) / np.linalg.norm(want))
    print(f"blocked attention: activation collectives {moved or 'none'}; rel. err. {err:.1e}")
    return not moved and err <= 1e-5


def batch_axes_check() -> bool:
    """FFTs on a batch split over `data` and replicated over `fsdp` (a 4 x 2 mesh, as with
    `config.mesh.batch_axes = ("data",)`): traced `on_mesh` with those batch axes, each device
    transforms its part and nothing moves; split over every axis instead, the result is
    gathered back over `fsdp`, which shows the check would see it."""
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    batch = NamedSharding(mesh, PartitionSpec("data"))
    x = jax.device_put(jax.random.normal(jax.random.key(3), (8, 3, 16, 20)), batch)

    def program(batch_axes) -> str:
        fn = on_mesh(mesh, lambda v: batchwise(jnp.fft.rfft2)(v), batch_axes)
        return jax.jit(fn, in_shardings=batch, out_shardings=batch).lower(x).compile().as_text()

    every_axis = movers(program(None))
    print(f"FFT over every axis of a batch split over data: {every_axis or 'no collectives'}")
    return per_device(program(("data",)), 2, "FFT, batch over data of data x fsdp") and bool(
        every_axis)


def train_step_program() -> str:
    """The data-parallel (data=8) train step's gradient program for a batch of 16, as training
    compiles it (`DeblurTask.train_step`, split, with the loop's shardings): optimized HLO."""
    config = load_config("deblur.py", "tiny")
    config.mesh.data, config.mesh.fsdp = 8, 1
    task = make_task(config)
    mesh = sharding.make_mesh(config.mesh)
    rng = jax.random.key(0)
    params = jax.eval_shape(task.init_params, rng)
    optimizers = task.make_optimizers(params)
    state = jax.eval_shape(lambda p, r: task.create_state(p, optimizers, r), params, rng)
    shardings = sharding.step_shardings(state, mesh, config)
    step = task.train_step(optimizers, split=True, shardings=shardings)
    image = jax.ShapeDtypeStruct((16, 28, 32, 3), jnp.float32, sharding=shardings.batch)
    state = sharding.with_shardings(state, shardings.state)
    return step.compile(state, {"blur": image, "sharp": image}).executables[0].as_text()


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
    sharded_fn = jax.jit(on_mesh(mesh, forward), in_shardings=(replicated, batch),
                         out_shardings=out_shardings)
    args = jax.device_put(params, replicated), jax.device_put(blurry, batch)
    compiled = sharded_fn.lower(*args).compile()
    sharded = compiled(*args)
    assert len(sharded.restored.sharding.device_set) == 8
    worst = 0.0
    for name, a, b in zip(single._fields, sharded, single):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))
        print(f"{name}: max |sharded - single| / max(1, max|single|) = {diff:.2e}")
        worst = max(worst, diff)
    print(f"devices={jax.device_count()} worst={worst:.2e}")
    forward_ok = (per_device(compiled.as_text(), 1, "forward") and blocked_attention_check(mesh)
                  and batch_axes_check())
    step_ok = per_device(train_step_program(), 2, "train step gradients")
    return 0 if worst <= 1e-5 and forward_ok and step_ok else 1


if __name__ == "__main__":
    sys.exit(main())
