"""The one place that knows the mesh and the partition rules.

Mesh axes `data` and `fsdp` (both `AxisType.Auto`: the models carry no sharding annotations, so
the compiler propagates shardings from the jitted step's in/out shardings; see
docs/training.md). Parameters, their optimiser moments and EMA copies are sharded over `fsdp`
by regex rules from the config; batches are split over `mesh.batch_axes`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from radblur_jax.train.optimizer import path_str
from radblur_jax.train.split_step import StepShardings

AXES = ("data", "fsdp")


def make_mesh(mesh_cfg: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp)` mesh over `devices` (default all); -1 in one axis = what remains."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp)]
    if sizes.count(-1) > 1:
        raise ValueError("config.mesh: at most one of data/fsdp may be -1")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if known <= 0 or len(devices) % known:
            raise ValueError(f"config.mesh: {len(devices)} devices do not split into {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices) or min(sizes) < 1:
        raise ValueError(f"config.mesh: data={sizes[0]} x fsdp={sizes[1]} != "
                         f"{len(devices)} devices")
    return jax.make_mesh(tuple(sizes), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def check_batch(batch_size: int, mesh: Mesh, batch_axes: Sequence[str]) -> None:
    """ValueError unless the global batch splits evenly over the mesh's batch axes."""
    devices = int(np.prod([mesh.shape[a] for a in batch_axes]))
    if batch_size % devices:
        raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the "
                         f"{devices} devices of mesh axes {tuple(batch_axes)}")


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
    """Shards the largest axis divisible by `fsdp` (ties: the last), if the leaf is large."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    best = None
    for i, n in enumerate(shape):
        if n % fsdp == 0 and (best is None or n >= shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * best + ["fsdp"]))


def spec_for(path: str, shape: tuple[int, ...], rules: Sequence, fsdp: int,
             min_size: int) -> PartitionSpec:
    """The PartitionSpec of one leaf: the first rule whose regex `re.search`es `path`."""
    if len(shape) == 0:
        return PartitionSpec()
    for pattern, spec in rules:
        if re.search(pattern, path):
            if spec == "replicated":
                return PartitionSpec()
            if spec == "fsdp":
                return _fsdp_spec(tuple(shape), fsdp, min_size)
            spec = tuple(spec)
            if len(spec) > len(shape):
                raise ValueError(f"sharding rule {pattern!r}: spec {spec} has more entries than "
                                 f"{path} has dimensions {shape}")
            return PartitionSpec(*spec)
    return PartitionSpec()


def tree_shardings(tree: Any, mesh: Mesh, sharding_cfg: ml_collections.ConfigDict) -> Any:
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules."""
    fsdp = mesh.shape["fsdp"]
    rules = [tuple(r) for r in sharding_cfg.rules]

    def one(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, spec_for(path_str(path), shape, rules, fsdp,
                                            int(sharding_cfg.min_fsdp_size)))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str]) -> NamedSharding:
    """Leading (batch) dimension split over `batch_axes`."""
    return NamedSharding(mesh, PartitionSpec(tuple(batch_axes)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def step_shardings(abstract_state: Any, mesh: Mesh, config: ml_collections.ConfigDict
                   ) -> StepShardings:
    """The train step's shardings: the state by `config.sharding`'s rules, the batch over
    `config.mesh.batch_axes`, the metrics replicated."""
    return StepShardings(tree_shardings(abstract_state, mesh, config.sharding),
                         batch_sharding(mesh, config.mesh.batch_axes), replicated(mesh))


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """`abstract` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs placed by `shardings`."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Per-process rows `(B_local, ...)` -> global arrays `(B_local * processes, ...)`."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def replicated_batch(host: dict[str, np.ndarray], sharding: NamedSharding
                     ) -> dict[str, jax.Array]:
    """The same host arrays on every process -> global arrays with `sharding` (evaluation)."""
    return {k: jax.make_array_from_callback(np.shape(v), sharding,
                                            lambda idx, v=v: np.asarray(v)[idx])
            for k, v in host.items()}
