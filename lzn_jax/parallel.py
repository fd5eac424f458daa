"""Devices, mesh and shardings: one program from one CPU to a multi-host TPU pod.

The mesh has two axes, both with explicit axis types:
- `data`: batch rows are split over it, and the zoning kernel gathers the anchors of every device along it, so
  each device zones its rows against all anchors of the global batch;
- `model`: size 1 unless `config.mesh.model` says otherwise. It is reserved for tensor parallelism: today every
  device along it holds the same rows and computes the same step (pure data parallelism over `data`).
Params and optimizer state are replicated, or with `mesh.fsdp` sharded over `data` (storage only: they are
gathered for compute).

Multi-host: every host runs this same program (`maybe_initialize_distributed` joins them). Devices are laid out
process-major, so host i owns the rows [i·b, (i+1)·b) of every global batch (b = batch_size / process_count),
exactly the rows its data iterator reads (`lzn_jax.data.train_iterator(process_index=i)`).
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from typing import Optional

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
MODEL = "model"


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else 0


def multi_process_environment() -> Optional[str]:
    """Which launcher describes this process as one of several, or None for a plain single process.

    - `JAX_COORDINATOR_ADDRESS` (host:port of process 0) with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`: any
      cluster (e.g. one command per GPU node);
    - SLURM with more than one task (`srun`), Open MPI with more than one rank (`mpirun`);
    - a Cloud TPU VM (libtpu installed): JAX reads the slice's workers from the TPU metadata server, and a
      single-host TPU VM becomes a one-process job.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "coordinator variables"
    if _env_int("SLURM_NTASKS") > 1:
        return "SLURM"
    if _env_int("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if importlib.util.find_spec("libtpu") is not None and _tpu_chips_attached():
        return "Cloud TPU"
    return None


def _tpu_chips_attached() -> bool:
    """TPU chips appear as /dev/accel* (v4, v5p) or /dev/vfio/<n> (v5e, v6e) on a TPU VM.

    libtpu alone is no sign of a TPU VM: the `[tpu]` extra installs it anywhere, for ahead-of-time compiles
    (experiments/scale_rehearsal.py --topology), and there `jax.distributed.initialize()` must not be tried.
    """
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when `multi_process_environment()` finds a launcher; else nothing.

    Must run before anything touches a JAX backend (the first device query fixes the process layout).
    """
    if jax.distributed.is_initialized():
        return
    launcher = multi_process_environment()
    if launcher is None:
        return
    if launcher == "coordinator variables":
        # JAX reads the address from the environment itself, but not the process count and index.
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(v, "").strip().isdigit()]
        if missing:
            raise ValueError(
                f"JAX_COORDINATOR_ADDRESS is set but {missing} are not non-negative integers: set JAX_NUM_PROCESSES "
                "(processes in the job) and JAX_PROCESS_ID (0 on the coordinator's host) for every process."
            )
        jax.distributed.initialize(num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID"))
    elif launcher == "Cloud TPU":
        try:
            jax.distributed.initialize()
        except ValueError as error:  # libtpu installed on a machine that is not a TPU VM
            logging.info("libtpu is installed but JAX found no TPU slice (%s): running as one process.", error)
            return
    else:
        jax.distributed.initialize()
    logging.info("jax.distributed (%s): process %d of %d", launcher, jax.process_index(), jax.process_count())


def make_mesh(data: int = -1, model: int = 1, devices=None) -> jax.sharding.Mesh:
    """The (data, model) mesh of `config.mesh`; data=-1 takes every device not used along `model`.

    One process may use a subset of its devices (data·model dividing the device count); a multi-process job
    uses all of them, with each host's devices whole rows of the mesh (model ≤ devices per host).
    `devices` (default: `jax.devices()`) may be another set, e.g. a TPU topology's devices that the scale
    rehearsal compiles for ahead of time.
    """
    devices = jax.devices() if devices is None else list(devices)
    total = len(devices)
    if not isinstance(model, int) or model < 1 or total % model:
        raise ValueError(f"config.mesh.model={model!r} must be a positive divisor of the {total} devices; use 1.")
    size_data = total // model if data == -1 else data
    if not isinstance(size_data, int) or size_data < 1 or total % (size_data * model):
        raise ValueError(
            f"config.mesh.data={data!r} × config.mesh.model={model} does not divide the {total} available devices; "
            "use config.mesh.data=-1 for all."
        )
    if jax.process_count() > 1:
        if size_data * model != total:
            raise ValueError(
                f"A {jax.process_count()}-process job must use all {total} devices, but config.mesh.data={data} × "
                f"config.mesh.model={model} = {size_data * model}: set config.mesh.data=-1."
            )
        if jax.local_device_count() % model:
            raise ValueError(
                f"config.mesh.model={model} must divide the {jax.local_device_count()} devices of each host: the "
                "model axis may not cross hosts."
            )
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))[: size_data * model]
    explicit = jax.sharding.AxisType.Explicit
    return jax.sharding.Mesh(np.asarray(devices).reshape(size_data, model), (DATA, MODEL), axis_types=(explicit, explicit))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    devices, hosts = mesh.shape[DATA], jax.process_count()
    if batch_size % devices or batch_size % hosts:
        raise ValueError(
            f"config.batch_size={batch_size} is not divisible by the {devices} devices of the data axis "
            f"({hosts} host(s)): use a multiple of {np.lcm(devices, hosts)}."
        )


def batch_sharding(mesh) -> NamedSharding:
    """Rows over `data`, the same rows on every device along `model`."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(abstract_tree, mesh, fsdp: bool):
    """Replicated, or (fsdp) each array sharded over `data` along its largest divisible axis."""
    size = mesh.shape[DATA]

    def choose(leaf):
        if not fsdp or leaf.ndim == 0:
            return replicated(mesh)
        for axis in np.argsort(leaf.shape, kind="stable")[::-1]:
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
