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
