"""Source records -> host-local numpy batches: decoding, views, seeds, batching, eval padding (all sources)."""

import math
import os
from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from lzn_jax.data import augment
from lzn_jax.data.base import IndexedSource, Source, host_range

try:
    # tf.data only feeds the host; keep TensorFlow off accelerators so it cannot take their memory from JAX.
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:
    pass  # TensorFlow was initialised by someone else first; its device choice stands.

Batch = dict[str, np.ndarray]


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full global batches in one epoch of `num_train` examples."""
    if num_train < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_train} train examples; use a smaller batch.")
    return num_train // batch_size


def train_batches(
    source: Source, cfg: ml_collections.ConfigDict, *, batch_size: int, local_batch: int, seed: int,
    start_step: int, process_index: int, process_count: int,
) -> Iterator[Batch]:
    """Endless host-local batches from global step `start_step`; see `lzn_jax.data.train_iterator`."""
    steps = steps_per_epoch(source.num_examples("train"), batch_size)  # raises now, not at the first next()
    to_example = _train_example_fn(
        source, cfg, seed=seed, batch_size=batch_size, local_batch=local_batch, process_index=process_index
    )

    def epochs():
        epoch, first_step = divmod(start_step, steps)
        while True:
            where = dict(seed=seed, epoch=epoch, first_step=first_step, local_batch=local_batch,
                         process_index=process_index, process_count=process_count)  # fmt: skip
            records = source.train_records(steps=steps, **where)
            first_record = (epoch * steps + first_step) * local_batch  # this host's records before this one
            ds = records.enumerate(start=first_record).map(to_example, num_parallel_calls=_parallel_calls(cfg))
            batch_indices = lambda where=where: (  # noqa: E731
                source.train_indices(**where) if isinstance(source, IndexedSource) else None)
            first_global_step = epoch * steps + first_step + 1
            describe = lambda k, s=first_global_step: f"train step {s + k}"  # noqa: E731
            batches = _batched(ds, local_batch, cfg).as_numpy_iterator()
            yield from _naming_unreadable(batches, source, "train", batch_indices, describe)
            epoch, first_step = epoch + 1, 0

    return epochs()


def eval_batches(
    source: Source, cfg: ml_collections.ConfigDict, *, split: str, local_batch: int, process_index: int,
    process_count: int,
) -> Iterator[Batch]:
    """One padded pass over this host's share of `split`; see `lzn_jax.data.eval_iterator`."""
    total = source.num_examples(split)
    start, stop = host_range(total, process_index, process_count)
    num_batches = math.ceil(math.ceil(total / process_count) / local_batch)  # the same on every host
    records = source.eval_records(split, process_index=process_index, process_count=process_count)

    def to_example(record):
        image, label = source.decode(record)
        image = augment.eval_view(augment.to_channels(image, cfg.num_channels), cfg)
        return {"image": _to_signed(image), "label": _label(label, cfg), "mask": tf.constant(True)}

    padding = {
        "image": tf.zeros([cfg.image_size, cfg.image_size, cfg.num_channels]),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }
    ds = records.map(to_example, num_parallel_calls=_parallel_calls(cfg))
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_batches * local_batch - (stop - start)))
    in_order = np.arange(start, start + num_batches * local_batch).reshape(num_batches, local_batch)
    batch_indices = lambda: np.where(in_order < stop, in_order, start)  # noqa: E731 (padding rows: a real row)
    return _naming_unreadable(_batched(ds, local_batch, cfg).as_numpy_iterator(), source, split, batch_indices,
                              lambda k: f"{split} batch {k + 1} of {num_batches}")  # fmt: skip


class UnreadableExample(ValueError):
    """An example of the dataset cannot be decoded (a truncated or corrupt image file)."""


def _naming_unreadable(batches, source, split, batch_indices, describe) -> Iterator[Batch]:
    """`batches`, with a decoding error turned into `UnreadableExample` naming the file(s) when the source can.

    tf.data reports a corrupt file as "Invalid PNG data, size 60 [[{{node decode_image/DecodeImage}}]]", with no
    path: an image-folder run stopped there again at every resume, and the user searched millions of files. The
    failing batch's indices are known (the order is a pure function of seed, epoch and step), so its files are
    decoded again one by one to find the culprit.
    """
    count = 0
    try:
        for batch in batches:
            yield batch
            count += 1
    except tf.errors.InvalidArgumentError as error:
        indices = batch_indices()
        found = []
        last = min(count + 1 + PREFETCH_BATCHES, 0 if indices is None else len(indices))
        for k in range(count, last):  # the failing batch (or, should tf.data report it late, the next ones)
            found = source.unreadable(split, np.asarray(indices[k]))
            if found:
                break
        if not found:
            raise
        raise UnreadableExample(
            f"Cannot decode {'; '.join(found)}, read for {describe(k)}: remove or replace it, then run the same "
            "command again (a training run resumes from its newest checkpoint)."
        ) from None


def _train_example_fn(source, cfg, *, seed, batch_size, local_batch, process_index):
    """(i, record) -> example dict, where i counts this host's records from step 0.

    The augmentation seed of view v is split from (seed, global example number), the global example number
    being step * batch_size + position in the global batch: a pure function of (seed, step, position).
    A `tf.function` so that the graph is traced once, not once per epoch's dataset.
    """

    @tf.function
    def to_example(i, record):
        image, label = source.decode(record)
        image = augment.to_channels(image, cfg.num_channels)
        step, position = i // local_batch, process_index * local_batch + i % local_batch
        example_seed = tf.stack([tf.constant(seed, tf.int64), step * batch_size + position])
        view_seeds = tf.random.experimental.stateless_split(example_seed, cfg.num_views)
        example = {"image": _to_signed(augment.train_view(image, view_seeds[0], cfg)), "label": _label(label, cfg)}
        if cfg.num_views == 2:
            example["image2"] = _to_signed(augment.train_view(image, view_seeds[1], cfg))
        return example

    return to_example


PREFETCH_BATCHES = 2  # batches made ahead of the one in use when `data.autotune` is off


def _parallel_calls(cfg) -> int:
    """A map's parallelism: tf.data's autotuner, or one call per CPU core this process may use."""
    if cfg.autotune:
        return tf.data.AUTOTUNE
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _batched(ds, local_batch, cfg):
    options = tf.data.Options()
    options.deterministic = True  # parallel maps must keep the record order the seeds were assigned in
    # The autotuner's thread sleeps between tuning rounds (10 ms doubling to 60 s, tensorflow/core/framework/model.h)
    # and a live iterator's close waited for it to wake, idle, at every training run's end (bench_input.json).
    options.autotune.enabled = bool(cfg.autotune)
    prefetch = tf.data.AUTOTUNE if cfg.autotune else PREFETCH_BATCHES
    return ds.batch(local_batch, drop_remainder=True).prefetch(prefetch).with_options(options)


def _to_signed(image):
    """[0, 1] -> [-1, 1]."""
    return tf.clip_by_value(image, 0.0, 1.0) * 2.0 - 1.0


def _label(label, cfg):
    """The dataset label, or 0 when training unconditionally (`num_classes == 1`, as the official loaders)."""
    return tf.cast(label, tf.int32) if cfg.num_classes > 1 else tf.constant(0, tf.int32)
