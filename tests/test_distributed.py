"""`distributed.maybe_initialize`: when a run starts the JAX distributed system by itself."""
from __future__ import annotations

import jax
import pytest

from radblur_jax.train import distributed

_CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                 "SLURM_LOCALID", "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE",
                 "OMPI_COMM_WORLD_RANK", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")
_STEP = dict(SLURM_JOB_ID="123", SLURM_STEP_NODELIST="node[01-02]", SLURM_PROCID="0",
             SLURM_LOCALID="0")


@pytest.fixture
def calls(monkeypatch):
    """The environment without cluster variables; records `jax.distributed.initialize` calls
    instead of making them."""
    for k in _CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    made = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: made.append(a))
    monkeypatch.setattr(distributed.logging, "info", lambda *a, **k: None)
    return made


@pytest.mark.parametrize("env", [
    {},
    {"SLURM_JOB_ID": "123"},                      # an sbatch script or salloc shell, no srun
    {**_STEP, "SLURM_NTASKS": "1"},               # srun with one task
    {"OMPI_COMM_WORLD_SIZE": "4"},                # no mpirun launcher URI
])
def test_one_process_does_not_initialise(calls, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.maybe_initialize() is False and calls == []


@pytest.mark.parametrize("env", [
    {**_STEP, "SLURM_NTASKS": "2"},
    {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:5000", "OMPI_COMM_WORLD_SIZE": "2",
     "OMPI_COMM_WORLD_RANK": "1"},
    {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"},
    {"TPU_WORKER_HOSTNAMES": "w0,w1"},
])
def test_a_launched_job_step_initialises(calls, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    distributed.maybe_initialize()
    assert calls == [()]


def test_explicit_arguments_go_together(calls):
    with pytest.raises(ValueError, match="go together"):
        distributed.maybe_initialize("127.0.0.1:1234", 2, None)
    distributed.maybe_initialize("127.0.0.1:1234", 2, 1)
    assert calls == [("127.0.0.1:1234", 2, 1)]
