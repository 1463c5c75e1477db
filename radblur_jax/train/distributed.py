"""Multi-process start-up: `jax.distributed.initialize` when (and only when) it is needed."""
from __future__ import annotations

import logging
import os

import jax

# Environments in which jax.distributed.initialize() finds the cluster by itself.
_AUTO_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def _multi_host_tpu() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialises the JAX distributed system once; returns whether it is initialised.

    Explicit arguments (all three) win; otherwise it initialises on a multi-host TPU slice,
    under SLURM / Open MPI, or with JAX_COORDINATOR_ADDRESS set, and does nothing on one host.
    """
    from jax._src import distributed  # the only place that records whether it is initialised
    if distributed.global_state.client is not None:
        return True
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id go "
                             "together")
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
    elif _multi_host_tpu() or any(os.environ.get(k) for k in _AUTO_ENV):
        jax.distributed.initialize()
    else:
        return False
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True
