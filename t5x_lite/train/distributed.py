"""Multi-process runs: starting `jax.distributed` from `config.distributed`, and the few
host-side exchanges between processes the trainer needs.

Every process of a job runs the same command. JAX itself (0.10) fills unset
`jax.distributed.initialize` arguments from: JAX_COORDINATOR_ADDRESS (address only),
SLURM (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID),
Open MPI (OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE/RANK) and Cloud TPU VMs (the GCE
metadata server, or TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES and TPU_WORKER_ID on
GKE). It does not read a process count or id from the environment, so JAX_NUM_PROCESSES
and JAX_PROCESS_ID are read here.

"auto" initializes only when the config keys or these variables describe more than one
process; it does not query the GCE metadata server (that blocks off Cloud TPU): on a
GCE TPU pod slice without TPU_WORKER_HOSTNAMES, set `initialize="on"`.

On CPU, cross-process computations use gloo, jax's default
`jax_cpu_collectives_implementation`; it is left as configured.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from t5x_lite.errors import UserError

MODES = ("auto", "on", "off")


def is_main_process() -> bool:
    """True on the one process that prints, logs and writes run files."""
    return jax.process_index() == 0


def initialize(config) -> bool:
    """Start `jax.distributed` as `config.distributed` says; True if it is running.

    Must run before anything touches devices. Safe to call again: a running
    distributed system is kept.
    """
    dist = config.distributed
    if dist.initialize not in MODES:
        raise UserError(f"config.distributed.initialize={dist.initialize!r}: use one of {MODES}")
    if dist.initialize == "off":
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = _explicit_args(dist)
    if dist.initialize == "auto" and not _describes_multi_process(kwargs):
        return False
    _check_consistent(kwargs, dist.initialize)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"jax.distributed.initialize({_show(kwargs)}) failed: {first_line}"
        ) from None
    return True


def _explicit_args(dist) -> dict:
    """Config keys, else JAX_NUM_PROCESSES / JAX_PROCESS_ID; unset ones are left to JAX."""
    kwargs = {}
    if dist.coordinator_address:
        kwargs["coordinator_address"] = dist.coordinator_address
    num_processes = dist.num_processes or _env_int("JAX_NUM_PROCESSES")
    if num_processes:
        kwargs["num_processes"] = num_processes
    process_id = dist.process_id if dist.process_id >= 0 else _env_int("JAX_PROCESS_ID")
    if process_id is not None and process_id >= 0:
        kwargs["process_id"] = process_id
    return kwargs


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def _cluster_process_count() -> int:
    """Processes a cluster manager JAX auto-detects says the job has (1 if none)."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in os.environ for v in slurm):
        return _env_int("SLURM_NTASKS") or 1
    if "OMPI_MCA_orte_hnp_uri" in os.environ:
        return _env_int("OMPI_COMM_WORLD_SIZE") or 1
    hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES")
    return len(hosts.split(",")) if hosts else 1


def _describes_multi_process(kwargs: dict) -> bool:
    return bool(
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or "coordinator_address" in kwargs
        or kwargs.get("num_processes", 1) > 1
        or _cluster_process_count() > 1
    )


def _check_consistent(kwargs: dict, mode: str) -> None:
    num_processes, process_id = kwargs.get("num_processes"), kwargs.get("process_id")
    if num_processes is not None and num_processes < 1:
        raise UserError(f"config.distributed.num_processes={num_processes} must be >= 1")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise UserError(
            f"config.distributed.process_id={process_id} is outside [0, {num_processes}) "
            "(config.distributed.num_processes)"
        )
    has_address = "coordinator_address" in kwargs or os.environ.get("JAX_COORDINATOR_ADDRESS")
    missing = [
        key
        for key, given in (
            ("coordinator_address", has_address),
            ("num_processes", num_processes is not None),
            ("process_id", process_id is not None),
        )
        if not given
    ]
    # With none given, or under a cluster manager, JAX fills in what is missing (and says
    # so if it cannot); a partial set it cannot complete is a config mistake.
    if missing and len(missing) < 3 and _cluster_process_count() == 1:
        raise UserError(
            f"config.distributed.initialize={mode!r} but no cluster manager (SLURM, Open MPI, "
            f"Cloud TPU) describes the job: set config.distributed.{', '.join(missing)} "
            "(or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)"
        )


def _show(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def max_over_processes(value: int) -> int:
    """The largest `value` any process passed; every process must call this together."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def gather_json(obj) -> list:
    """Every process's JSON-serializable `obj`, in process order; a collective call."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(len(data)))  # [processes]
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: len(data)] = data
    everyone = multihost_utils.process_allgather(padded)  # [processes, max length]
    return [json.loads(bytes(row[:n])) for row, n in zip(everyone, lengths)]


def barrier(name: str) -> None:
    """Wait until every process gets here (e.g. after process 0 wrote shared files)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
