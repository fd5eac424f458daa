"""Devices, mesh and shardings: one program from one CPU to a multi-host TPU pod.

The mesh has one `data` axis (explicit axis type). Batches are sharded by rows over it; params and optimizer
state are replicated, or sharded over it with `mesh.fsdp` (storage only: they are gathered for compute).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when the environment describes a multi-process job.

    Cloud TPU pods describe themselves; GPU clusters through the coordinator variables JAX reads
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or SLURM / Open MPI. A single process
    on one machine needs nothing.
    """
    if jax.distributed.is_initialized():
        return
    on_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
    if on_tpu_pod or any(os.environ.get(name) for name in _DISTRIBUTED_ENV):
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(data: int = -1) -> jax.sharding.Mesh:
    """A 1-D mesh over `data` devices (-1: all), with an explicit axis type."""
    total = jax.device_count()
    size = total if data == -1 else data
    if size < 1 or total % size:
        raise ValueError(f"config.mesh.data={data} does not divide the {total} available devices; use -1 for all.")
    return jax.make_mesh((size,), (DATA,), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:size])


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    devices, hosts = mesh.shape[DATA], jax.process_count()
    if batch_size % devices or batch_size % hosts:
        raise ValueError(
            f"config.batch_size={batch_size} is not divisible by the {devices} devices of the data axis "
            f"({hosts} host(s)): use a multiple of {np.lcm(devices, hosts)}."
        )


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(abstract_tree, mesh, fsdp: bool):
    """Replicated, or (fsdp) each array sharded over `data` along its largest divisible axis."""
    size = mesh.shape[DATA]

    def choose(leaf):
        if not fsdp or leaf.ndim == 0:
            return replicated(mesh)
        for axis in np.argsort(leaf.shape)[::-1]:
            if leaf.shape[axis] % size == 0 and leaf.shape[axis] >= size:
                spec = [None] * leaf.ndim
                spec[axis] = DATA
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree.map(choose, abstract_tree)


def global_batch(local_batch: dict, mesh) -> dict:
    """Host-local numpy rows -> one global jax.Array per key, row-sharded over the mesh (multi-host safe)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
