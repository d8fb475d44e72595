"""Meshes and multi-host helpers: the one place where memjax decides how work spreads over devices.

Data parallelism everywhere in memjax is `jax.jit` over a `Mesh` with `NamedSharding`, and
`jax.shard_map` inside kernels. The same code runs on one CPU, four forced CPU devices (the tests),
one GPU, or many processes on many machines (a TPU pod slice, a Slurm GPU cluster) once
`initialize_distributed` has joined them on JAX's distributed runtime; tests/test_multihost.py
runs two such processes on one machine against one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memjax.data import DATA_AXIS  # pylint: disable=unused-import  (memjax.parallel.DATA_AXIS)


# What JAX's own cluster detection reads (jax/_src/clusters): Slurm's and Open MPI's variables,
# and the TPU pods of GKE and multislice. Cloud TPU VMs are found through JAX (`_on_cloud_tpu_vm`).
_SLURM = ("SLURM_JOB_ID", "SLURM_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE")
_TPU_PODS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
# Read by memjax and handed to jax.distributed.initialize, which reads only the address itself.
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or not value.strip():
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name}={value!r} is not an integer") from None


def _on_cloud_tpu_vm() -> bool:
  """Whether JAX found TPU chips and libtpu when it was imported (a Cloud TPU VM)."""
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def cluster_environment() -> str | None:
  """The multi-process launcher whose environment this process runs in, or None.

  Slurm and Open MPI count when they started more than one task (a one-task allocation, e.g. an
  interactive `salloc`, is one machine); a Cloud TPU VM counts always (JAX asks its metadata
  server for the slice's hosts; a single-host TPU VM makes a cluster of one).
  """
  if all(name in os.environ for name in _SLURM):
    return "slurm" if (_env_int("SLURM_NTASKS") or 1) > 1 else None
  if all(name in os.environ for name in _OPEN_MPI):
    return "open mpi" if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1 else None
  if any(name in os.environ for name in _TPU_PODS) or _on_cloud_tpu_vm():
    return "cloud tpu"
  return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None, *,
                           heartbeat_timeout_seconds: int | None = None,
                           shutdown_timeout_seconds: int | None = None,
                           initialization_timeout_seconds: int | None = None) -> bool:
  """Joins a multi-process run when asked or when the environment describes one.

  Returns whether this process is part of one (jax.distributed is initialized); on one machine
  with nothing asked it does nothing. It must run before anything uses a JAX device. The run is
  described by, first found first:

  1. the arguments (launch.py's --coordinator_address, --num_processes, --process_id);
  2. $JAX_COORDINATOR_ADDRESS (host:port of process 0), which JAX reads, with
     $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, which memjax reads and passes on: JAX itself reads
     neither;
  3. JAX's own detection of a launcher (`cluster_environment`): Slurm (srun, one process per
     task), Open MPI (mpirun), Cloud TPU VMs (every host of a pod slice) and TPU pods on GKE.
     Settings missing from 1 and 2 are detected there.

  heartbeat_timeout_seconds bounds how long a process lives on after another one died (JAX ends
  it with "Terminating process because the JAX distributed service detected fatal errors");
  shutdown_timeout_seconds how long a finished process waits at exit for the others (see
  `wait_for_every_process`); initialization_timeout_seconds how long processes wait for each
  other at the start. None keeps JAX's defaults: 100, 300 and 300 seconds.

  Raises:
    ValueError: when a coordinator is named but the number of processes or this process's id is
      not known (and no launcher gives them), or a setting is not an integer.
  """
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int(NUM_PROCESSES_ENV)
  if process_id is None:
    process_id = _env_int(PROCESS_ID_ENV)
  explicit = (coordinator_address, num_processes, process_id)
  cluster = cluster_environment()
  if cluster is None:
    if all(value is None for value in explicit):
      return False
    missing = [name for name, value in zip(
        ("--coordinator_address or $JAX_COORDINATOR_ADDRESS",
         f"--num_processes or ${NUM_PROCESSES_ENV}", f"--process_id or ${PROCESS_ID_ENV}"),
        explicit) if value is None]
    if missing:
      raise ValueError(
          "a multi-process run needs the coordinator's host:port, the number of processes and "
          f"this process's id; missing: {', '.join(missing)} (no Slurm, Open MPI or Cloud TPU "
          "environment to detect them from)")
  options = {"heartbeat_timeout_seconds": heartbeat_timeout_seconds,
             "shutdown_timeout_seconds": shutdown_timeout_seconds,
             "initialization_timeout": initialization_timeout_seconds}
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, **{key: int(value) for key, value in options.items()
                                if value is not None})
  return True


def wait_for_every_process(name: str) -> None:
  """Returns once every process of the run has called this with the same `name` (at once alone).

  Each process of a JAX run waits at exit at most shutdown_timeout_seconds (300 s by default)
  for the others, then JAX aborts them all. Work that only process 0 does at the end (writing an
  audit's report) would be cut off that way when it takes longer, so every process calls this
  before it exits (launch.py does after the workflow): the others wait here, alive and sending
  heartbeats, for as long as process 0 needs.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def data_mesh(devices: Sequence[jax.Device] | int | None = None,
              axis_name: str = DATA_AXIS) -> Mesh:
  """A one-axis mesh over `devices` (all devices of all hosts by default, or the first n).

  Each process's devices are next to each other on the axis, process 0's first (in the order
  `jax.make_mesh` picks within a process): a batch split by rows then holds process 0's rows
  first, then process 1's, ..., so that the input pipeline (which gives process p the p-th part
  of every global batch) fills the rows as one process would, whatever the number of processes.
  """
  if devices is None:
    devices = jax.devices()
  elif isinstance(devices, int):
    available = jax.devices()
    if not 1 <= devices <= len(available):
      raise ValueError(f"asked for a mesh of {devices} devices; {len(available)} are available")
    devices = available[:devices]
  devices = list(devices)
  mesh = jax.make_mesh((len(devices),), (axis_name,), devices=devices)
  ordered = sorted(mesh.devices.flat, key=lambda device: device.process_index)  # stable
  if ordered == list(mesh.devices.flat):
    return mesh
  return Mesh(np.asarray(ordered).reshape(mesh.devices.shape), mesh.axis_names,
              axis_types=mesh.axis_types)


def rows_sharding(mesh: Mesh, memory_kind: str | None = None) -> NamedSharding:
  """Leading axis split over every axis of the mesh (rows of a batch or block), the rest whole.

  `memory_kind` places the shards elsewhere than in the devices' own memory, e.g. "pinned_host".
  """
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names), memory_kind=memory_kind)


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def mesh_size(mesh: Mesh) -> int:
  return int(np.prod(list(mesh.shape.values())))


def to_host(x: jax.Array) -> np.ndarray:
  """The whole global array as numpy on every process (gathered across hosts when it must be)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
