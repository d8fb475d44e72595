"""Meshes and multi-host helpers: the one place where memjax decides how work spreads over devices.

Data parallelism everywhere in memjax is `jax.jit` over a `Mesh` with `NamedSharding`, and
`jax.shard_map` inside kernels. The same code runs on one CPU, four forced CPU devices (the tests),
one GPU, or a multi-host TPU pod once `initialize_distributed` has run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Joins a multi-host run when the environment describes one; a no-op on a single host.

  JAX reads the coordinator address, process count and id from the cluster environment (SLURM,
  TPU pods, Kubernetes) or from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`.
  """
  if jax.distributed.is_initialized():
    return
  explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
  cluster = any(name in os.environ for name in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                                                "MEGASCALE_COORDINATOR_ADDRESS"))
  if explicit or cluster:
    jax.distributed.initialize()


def data_mesh(devices: Sequence[jax.Device] | int | None = None,
              axis_name: str = DATA_AXIS) -> Mesh:
  """A one-axis mesh over `devices` (all devices of all hosts by default, or the first n)."""
  if devices is None:
    devices = jax.devices()
  elif isinstance(devices, int):
    available = jax.devices()
    if not 1 <= devices <= len(available):
      raise ValueError(f"asked for a mesh of {devices} devices; {len(available)} are available")
    devices = available[:devices]
  devices = list(devices)
  return jax.make_mesh((len(devices),), (axis_name,), devices=devices)


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
