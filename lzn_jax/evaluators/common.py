"""Shared machinery of the evaluators: sharded per-batch functions and passes over a split."""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from lzn_jax import data, parallel


def sharded_fn(local: Callable, mesh, num_row_args: int) -> "ShardedFn":
    """jit(shard_map(local)) for `local(params, *row_args, axis_name=...)` returning row-sharded outputs.

    The varying-axes check is off: the adaptive RK45 sampler's loop (diffrax) starts its carry with constants that
    its body makes device-varying, which the check rejects. Evaluators only gather rows (no psum, no gradients), so
    the check has nothing to protect here.
    """
    rows = P(parallel.DATA)
    whole = jax.sharding.NamedSharding(mesh, P())

    def run(params, *row_args):
        params = jax.tree.map(lambda x: jax.reshard(x, whole), params)  # gathered where FSDP shards them

        def body(params, *args):
            return local(params, *args, axis_name=parallel.DATA)

        in_specs = (P(),) + (rows,) * num_row_args
        return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=rows, check_vma=False)(params, *row_args)

    return ShardedFn(jax.jit(run))


class ShardedFn:
    """A jitted `sharded_fn`, called and traced with no mesh in context.

    The training loop runs the evaluators inside `jax.set_mesh` (explicit axes). There, JAX 0.10 gives the
    constants made inside a shard_map a manual sharding and then fails computing on them eagerly (an assertion in
    `op_shardings`): diffrax's RK45 does so with its status flags. The functions carry their shardings in their
    inputs and need no mesh in context.
    """

    def __init__(self, jitted):
        self._jitted = jitted

    def __call__(self, *args):
        with jax.set_mesh(None):
            return self._jitted(*args)

    def trace(self, *args):
        """`jax.jit(...).trace`: what the scale rehearsal lowers and compiles."""
        with jax.set_mesh(None):
            return self._jitted.trace(*args)


def rows_of_full_batch(x: np.ndarray, mesh) -> tuple[jax.Array, int]:
    """A numpy batch [B, ...] that every host holds in full -> (the global array [B', ...] row-sharded over the
    mesh's data axis, padded with zero rows to B' a multiple of the devices, B). Fetch results with `fetch(y)[:B]`."""
    x = np.asarray(x)
    multiple = mesh.shape[parallel.DATA] * jax.process_count()
    pad = -len(x) % multiple
    padded = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    return parallel.global_batch(host_share({"x": padded}), mesh)["x"], len(x)


def row_structs(mesh, batch_size: int, *shapes_dtypes) -> tuple:
    """Abstract row-sharded inputs [B, ...] of a sharded function, B rounded up to the data axis (as the
    evaluators pad): what `compile_targets()` hands the scale rehearsal. shapes_dtypes: ((per-row shape), dtype)."""
    devices = mesh.shape[parallel.DATA]
    rows = -(-batch_size // devices) * devices
    sharding = jax.sharding.NamedSharding(mesh, P(parallel.DATA))
    return tuple(jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=sharding) for shape, dtype in shapes_dtypes)


def image_rows(image_shape: tuple[int, int, int], mesh, batch_size: int, latent_dim: int) -> tuple:
    """Abstract (images, labels, mask, prior) rows of a `split_batches` batch with its prior latents."""
    specs = ((image_shape, np.float32), ((), np.int32), ((), np.bool_), ((latent_dim,), np.float32))
    return row_structs(mesh, batch_size, *specs)


def split_batches(data_cfg, split: str, batch_size: int, mesh) -> Iterator[dict]:
    """One pass over `split` ("train" or "test") of `data_cfg` (config.data) as global batches (padded, with a
    boolean `mask`), row-sharded."""
    parallel.check_batch_size(batch_size, mesh)
    local_batches = data.eval_iterator(
        data_cfg, split=split, batch_size=batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(),
    )  # fmt: skip
    for local in local_batches:
        yield parallel.global_batch(local, mesh)


def fetch(x) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every host."""
    return np.asarray(jax.experimental.multihost_utils.process_allgather(x, tiled=True))


# ----------------------------------------------------------------------------------------------------------
# Host memory and bounded passes in a fixed order.

# Batches of a tf.data pass alive at once on a host: the one in use plus the prefetch buffer (data/pipeline.py's
# PREFETCH_BATCHES = 2; with `data.autotune` TensorFlow keeps about two ready). Host-memory statements of the
# evaluators count pipeline batches with this factor.
PIPELINE_BATCHES = 3
DEFAULT_MAX_HOST_BYTES = 2 * 1024**3  # rows an ordered pass may buffer on a host (see `ordered_split`)
WEIGHTS = ("ema", "raw")


def image_bytes(data_cfg) -> int:
    """Bytes of one float32 image [H, W, C] of `data_cfg` (config.data)."""
    return 4 * int(np.prod(data.image_shape(data_cfg)))


def pipeline_bytes(data_cfg, batch_size: int) -> int:
    """Host bytes of a tf.data pass of global `batch_size` images: PIPELINE_BATCHES host-local batches."""
    return PIPELINE_BATCHES * (batch_size // jax.process_count()) * image_bytes(data_cfg)


def check_weights(weights) -> tuple[str, ...] | None:
    """`weights`: None (the run's config.eval_use_ema choice) or a non-empty subset of WEIGHTS, in order.

    The training loop runs an evaluator once per entry, on `state.ema_params` ("ema") or `state.params`
    ("raw"); the names of the weights config.eval_use_ema does not choose get the suffix `_ema` / `_raw`.
    """
    if weights is None:
        return None
    weights = (weights,) if isinstance(weights, str) else tuple(weights)
    if not weights or any(w not in WEIGHTS for w in weights) or len(set(weights)) != len(weights):
        raise ValueError(f"weights must be a non-empty subset of {WEIGHTS} (or None), got {weights}.")
    return weights


def torch_randperm(n: int, seed: int, count: int | None = None) -> np.ndarray:
    """The first `count` (default all n) entries of PyTorch's CPU `torch.randperm(n, generator=g)` with
    `g.manual_seed(seed)`: the order the official `StatefulSampler` reads a split in (epoch 0).

    PyTorch shuffles with Fisher-Yates, swapping position i with i + (u_i mod (n - i)), u_i the i-th 32-bit
    MT19937 output (`manual_seed` seeds MT19937 with the low 32 bits, as numpy's legacy `RandomState` does). Only
    the swaps that settle the first `count` positions are replayed, in O(count) time and memory.
    """
    if n >= 2**32 // 20:
        raise ValueError(f"torch.randperm switches to a 64-bit draw for n >= 2**32 / 20; n={n} is not reproduced.")
    count = n if count is None else min(int(count), n)
    draws = np.random.RandomState(seed & 0xFFFFFFFF).randint(0, 2**32, size=max(min(count, n - 1), 0), dtype=np.uint32)
    moved: dict[int, int] = {}  # position -> value, where the value is not the position itself
    out = np.empty(count, np.int64)
    for i in range(count):
        j = i + int(draws[i]) % (n - i) if i < n - 1 else i
        out[i] = moved.get(j, j)
        moved[j] = moved.get(i, i)
    return out


def ordered_split(
    data_cfg, split: str, order: np.ndarray, batch_size: int, max_host_bytes: int = DEFAULT_MAX_HOST_BYTES
) -> Iterator[dict]:
    """The examples `order` [n] (indices into the eval order of `data_cfg`'s split) as full batches of
    `batch_size`, in order.

    Yields host numpy `{"image": [b, H, W, C], "label": [b], "mask": [b]}`, the last batch padded (mask False).
    Every host reads the whole split. A pass buffers as many rows as fit `max_host_bytes` (at least one batch),
    so the host holds min(n, max_host_bytes / image bytes) images and reads the split
    ceil(n · image bytes / max_host_bytes) times.
    """
    order = np.asarray(order, np.int64)
    total = data.num_examples(data_cfg, split)
    if order.ndim != 1 or (order.size and (order.min() < 0 or order.max() >= total)):
        raise ValueError(f"order must be indices [n] into the {total} examples of split {split!r}.")
    per_pass = max(1, max_host_bytes // (image_bytes(data_cfg) * batch_size)) * batch_size
    for start in range(0, len(order), per_pass):
        wanted = order[start : start + per_pass]
        slot = np.full(total, -1, np.int64)
        slot[wanted] = np.arange(len(wanted))
        images = np.zeros((len(wanted), *data.image_shape(data_cfg)), np.float32)
        labels = np.zeros(len(wanted), np.int32)
        seen = 0
        for batch in data.eval_iterator(data_cfg, split=split, batch_size=batch_size):
            rows = np.flatnonzero(batch["mask"])
            where = slot[seen + rows]
            keep = where >= 0
            images[where[keep]], labels[where[keep]] = batch["image"][rows[keep]], batch["label"][rows[keep]]
            seen += len(rows)
        for b in range(0, len(wanted), batch_size):
            n = min(batch_size, len(wanted) - b)
            pad = batch_size - n
            yield {
                "image": np.concatenate([images[b : b + n], np.zeros((pad, *images.shape[1:]), np.float32)]),
                "label": np.concatenate([labels[b : b + n], np.zeros(pad, np.int32)]),
                "mask": np.arange(batch_size) < n,
            }


def host_share(batch: dict) -> dict:
    """This host's contiguous rows of a global batch every host holds in full (for `parallel.global_batch`)."""
    count, index = jax.process_count(), jax.process_index()
    return {k: np.split(np.asarray(v), count)[index] for k, v in batch.items()}
