"""Multi-process start-up: `jax.distributed.initialize` when (and only when) it is needed."""
from __future__ import annotations

import logging
import os

import jax


def _launched_processes() -> int:
    """How many processes a cluster launcher started for this job step (1 = none found).

    SLURM and Open MPI describe the step only when their launcher (`srun`, `mpirun`) starts
    the processes: a plain `sbatch` script or a `salloc` shell has `SLURM_JOB_ID` but no
    step, and `jax.distributed.initialize()` would fail there. Each needs all of the
    variables JAX's cluster detection reads, and more than one process.
    """
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(k in os.environ for k in slurm):
        return int(os.environ["SLURM_NTASKS"])
    ompi = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")
    if all(k in os.environ for k in ompi):
        return int(os.environ["OMPI_COMM_WORLD_SIZE"])
    return 1


def _multi_host_tpu() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialises the JAX distributed system once; returns whether it is initialised.

    Explicit arguments (all three) win; otherwise it initialises on a multi-host TPU slice,
    in a job step that `srun` / `mpirun` started with several processes, or with
    JAX_COORDINATOR_ADDRESS set, and does nothing on one host (one process inside a SLURM
    allocation included)."""
    from jax._src import distributed  # the only place that records whether it is initialised
    if distributed.global_state.client is not None:
        return True
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id go "
                             "together")
        jax.distributed.initialize(coordinator_address, int(num_processes), int(process_id))
    elif (_multi_host_tpu() or os.environ.get("JAX_COORDINATOR_ADDRESS")
          or _launched_processes() > 1):
        jax.distributed.initialize()
    else:
        return False
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True
