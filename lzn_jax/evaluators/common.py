"""Shared machinery of the evaluators: sharded per-batch functions and passes over a split."""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from lzn_jax import data, parallel


def sharded_fn(local: Callable, mesh, num_row_args: int) -> Callable:
    """jit(shard_map(local)) for `local(params, *row_args, axis_name=...)` returning row-sharded outputs."""
    rows = P(parallel.DATA)

    def run(params, *row_args):
        def body(params, *args):
            return local(params, *args, axis_name=parallel.DATA)

        return jax.shard_map(body, mesh=mesh, in_specs=(P(),) + (rows,) * num_row_args, out_specs=rows)(
            params, *row_args
        )

    return jax.jit(run)


def row_structs(mesh, batch_size: int, *shapes_dtypes) -> tuple:
    """Abstract row-sharded inputs [B, ...] of a sharded function, B rounded up to the data axis (as the
    evaluators pad): what `compile_targets()` hands the scale rehearsal. shapes_dtypes: ((per-row shape), dtype)."""
    devices = mesh.shape[parallel.DATA]
    rows = -(-batch_size // devices) * devices
    sharding = jax.sharding.NamedSharding(mesh, P(parallel.DATA))
    return tuple(jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=sharding) for shape, dtype in shapes_dtypes)


def image_rows(config, mesh, batch_size: int, latent_dim: int) -> tuple:
    """Abstract (images, labels, mask, prior) rows of a `split_batches` batch with its prior latents."""
    image = (config.data.image_size, config.data.image_size, config.data.num_channels)
    specs = ((image, np.float32), ((), np.int32), ((), np.bool_), ((latent_dim,), np.float32))
    return row_structs(mesh, batch_size, *specs)


def split_batches(config, split: str, batch_size: int, mesh) -> Iterator[dict]:
    """One pass over `split` ("train" or "test") as global batches (padded, with a boolean `mask`), row-sharded."""
    parallel.check_batch_size(batch_size, mesh)
    local_batches = data.eval_iterator(
        config.data, split=split, batch_size=batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(),
    )  # fmt: skip
    for local in local_batches:
        yield parallel.global_batch(local, mesh)


def fetch(x) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every host."""
    return np.asarray(jax.experimental.multihost_utils.process_allgather(x, tiled=True))
