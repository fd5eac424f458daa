"""Input pipelines: deterministic, resumable, per-host.

    batches = data.train_iterator(cfg, batch_size=64, seed=0, start_step=0)   # {"image", "label"(, "image2")}
    for batch in data.eval_iterator(cfg, split="test", batch_size=256): ...   # + "mask" for padding rows

Images are NHWC float32 in [-1, 1], labels int32. A training batch depends only on (seed, step): in-memory
sources draw the global batch of a step from a per-epoch permutation and give each host its rows, so the
global batch does not depend on the number of hosts; streaming sources give every host its own shard,
shuffled per epoch with a seeded buffer. Augmentation draws come from (seed, step, position in the global
batch). A resumed run (start_step = k) therefore sees exactly the batches an uninterrupted run sees from step k.

`data.source` picks where examples come from, here and nowhere else: "digits", "tfds", "image_folder".
"""

from __future__ import annotations

from typing import Iterator

import ml_collections
import numpy as np
import tensorflow as tf

from lzn_jax.data import augment, sources

SOURCES = ("digits", "tfds", "image_folder")
_SEED_SALT = 0x4C5A4E  # keeps the data streams apart from other uses of the run seed


def default_config() -> ml_collections.ConfigDict:
    """Every data key with its default."""
    c = ml_collections.ConfigDict()
    c.source = "digits"
    c.name = ""  # TFDS dataset name (source="tfds"), e.g. "cifar10", "imagenet2012"
    c.data_dir = ""  # TFDS data_dir, or the image folder (source="image_folder"); local or gs://
    c.in_memory = False  # tfds: load the whole split as arrays (small datasets: random access, host-invariant)
    c.train_split = "train"
    c.test_split = "test"
    c.image_size = 16
    c.num_channels = 1
    c.num_classes = 10
    c.num_views = 1  # 2: two independently augmented views ("image", "image2"), case study 2
    c.shuffle_buffer = 50_000  # streaming sources
    c.eval_resize_ratio = 1.0  # eval: resize the shorter side to image_size · ratio, then centre-crop (ImageNet 256/224)
    c.augment = ml_collections.ConfigDict()
    c.augment.crop_scale_min = 1.0  # RandomResizedCrop area fraction U(min, 1); 1: no crop (resize + centre crop)
    c.augment.max_rotate_degrees = 0.0
    c.augment.flip = False  # horizontal flip with probability 1/2
    c.augment.color_jitter = 0.0  # brightness/contrast/saturation strength (hue separately)
    c.augment.hue = 0.0
    c.augment.color_jitter_prob = 0.8
    c.augment.grayscale_prob = 0.0
    c.augment.blur_prob = 0.0
    c.augment.blur_kernel_fraction = 0.1  # kernel = 0.1 · size + 1 (official: 23 at 224)
    return c


def check(cfg) -> None:
    """Config errors and missing data, before any compute."""
    if cfg.source not in SOURCES:
        raise ValueError(f"data.source={cfg.source!r} is not a source; use one of {SOURCES}.")
    if cfg.num_views not in (1, 2):
        raise ValueError(f"data.num_views must be 1 or 2; got {cfg.num_views}.")
    if cfg.image_size < 4 or cfg.num_channels not in (1, 3):
        raise ValueError(f"data.image_size={cfg.image_size} / num_channels={cfg.num_channels}: need size ≥ 4, 1 or 3 channels.")
    if cfg.source == "tfds" and not cfg.name:
        raise ValueError("data.source='tfds' needs data.name (e.g. 'cifar10').")
    if cfg.source == "image_folder" and not cfg.data_dir:
        raise ValueError("data.source='image_folder' needs data.data_dir (the folder of images).")


def check_available(cfg) -> None:
    """Fails at start, saying what to download and where, when the configured data is not there."""
    check(cfg)
    if cfg.source == "tfds":
        sources.check_tfds(cfg.name, cfg.data_dir, cfg.train_split)
    elif cfg.source == "image_folder":
        sources.image_files(sources.folder_split_root(cfg.data_dir, cfg.train_split))


def _in_memory(cfg) -> bool:
    return cfg.source == "digits" or (cfg.source == "tfds" and cfg.in_memory)


def load_arrays(cfg, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as numpy arrays (in-memory sources): images [N, H, W, C] in [-1, 1], labels [N]."""
    check(cfg)
    if cfg.source == "digits":
        arrays = sources.digits(split, cfg.image_size, cfg.num_channels)
    elif _in_memory(cfg):
        arrays = sources.tfds_arrays(cfg.name, cfg.data_dir, split, cfg.image_size, cfg.num_channels)
    else:
        batches = list(eval_iterator(cfg, split=split, batch_size=256))
        keep = np.concatenate([b["mask"] for b in batches])
        images = np.concatenate([b["image"] for b in batches])[keep]
        return images, np.concatenate([b["label"] for b in batches])[keep]
    return arrays.images * 2.0 - 1.0, arrays.labels


def num_examples(cfg, split: str) -> int:
    if _in_memory(cfg):
        return len(load_arrays(cfg, split)[1])
    if cfg.source == "tfds":
        return sources.tfds_split_size(sources.tfds_builder(cfg.name, cfg.data_dir), split)
    return len(sources.image_files(sources.folder_split_root(cfg.data_dir, split)))


# ------------------------------------------------------------------------------------------- training


def _example_seed(seed, step, position):
    """A stateless seed [2] per (run seed, step, position in the global batch)."""
    base = tf.stack([tf.constant(seed ^ _SEED_SALT, tf.int64), tf.cast(step, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


def _views(image, label, seed, cfg):
    """{"image", "label"(, "image2")} with images in [-1, 1]: each view augmented with its own seed."""
    out = {"label": label}
    for v, key in enumerate(("image", "image2")[: cfg.num_views]):
        view_seed = tf.random.experimental.stateless_fold_in(seed, v)
        out[key] = augment.augment(image, view_seed, cfg.augment, cfg.image_size) * 2.0 - 1.0
    return out


def _in_memory_train(cfg, batch_size, seed, start_step, process_index, process_count):
    arrays = load_arrays(cfg, cfg.train_split)
    images = tf.constant((arrays[0] + 1.0) / 2.0)
    labels = tf.constant(arrays[1])
    n, global_batch = len(arrays[1]), batch_size * process_count
    steps_per_epoch = n // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"The global batch {global_batch} is larger than the {n} training examples of {cfg.source}.")

    def rows_of_step(step):
        epoch, k = step // steps_per_epoch, step % steps_per_epoch
        noise = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed ^ _SEED_SALT, tf.int64), -1 - epoch]))
        permutation = tf.argsort(noise)
        first = k * global_batch + process_index * batch_size
        positions = process_index * batch_size + tf.range(batch_size, dtype=tf.int64)
        indices = permutation[first : first + batch_size]
        return tf.data.Dataset.from_tensor_slices((indices, tf.fill([batch_size], step), positions))

    def example(index, step, position):
        return _views(tf.gather(images, index), tf.gather(labels, index), _example_seed(seed, step, position), cfg)

    steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    ds = steps.flat_map(rows_of_step).map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size)


def _streaming_train(cfg, batch_size, seed, start_step, process_index, process_count):
    if cfg.source == "tfds":
        ds, n = sources.tfds_stream(cfg.name, cfg.data_dir, cfg.train_split, cfg.num_channels, process_index, process_count)
    else:
        ds, n = sources.folder_stream(cfg.data_dir, cfg.train_split, cfg.num_channels, process_index, process_count)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"The host batch {batch_size} is larger than this host's {n} training examples.")
    first_epoch, skip = divmod(start_step, steps_per_epoch)

    def epoch_batches(epoch):
        shuffled = ds.shuffle(cfg.shuffle_buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
        numbered = shuffled.take(steps_per_epoch * batch_size).enumerate()

        def example(i, pair):
            step = epoch * steps_per_epoch + i // batch_size
            position = process_index * batch_size + i % batch_size
            return _views(pair[0], pair[1], _example_seed(seed, step, position), cfg)

        return numbered.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    return epochs.flat_map(epoch_batches).skip(skip)


def train_iterator(cfg, *, batch_size: int, seed: int, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:  # fmt: skip
    """Endless host-local training batches [batch_size, ...] from step `start_step` on."""
    check(cfg)
    build = _in_memory_train if _in_memory(cfg) else _streaming_train
    ds = build(cfg, batch_size, seed, start_step, process_index, process_count)
    return iter(ds.prefetch(2).as_numpy_iterator())


# ------------------------------------------------------------------------------------------- evaluation


def _eval_examples(cfg, split, process_index, process_count):
    """(dataset of (image in [-1, 1] at image_size, label), count) of this host's share of a split."""
    if _in_memory(cfg):
        images, labels = load_arrays(cfg, split)
        share = np.array_split(np.arange(len(labels)), process_count)[process_index]
        return tf.data.Dataset.from_tensor_slices((images[share], labels[share])), len(share)
    if cfg.source == "tfds":
        ds, n = sources.tfds_stream(cfg.name, cfg.data_dir, split, cfg.num_channels, process_index, process_count)
    else:
        ds, n = sources.folder_stream(cfg.data_dir, split, cfg.num_channels, process_index, process_count)
    size, ratio = cfg.image_size, cfg.eval_resize_ratio
    resize_to = int(round(size * ratio))
    def prepare(x, y):
        image = tf.ensure_shape(augment.resize_center_crop(x, size, resize_to), [size, size, cfg.num_channels])
        return image * 2.0 - 1.0, y

    return ds.map(prepare), n


def eval_iterator(cfg, *, split: str, batch_size: int, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """One pass over this host's share of `split`, no augmentation; the last batch padded, "mask" marks real rows.

    Every host yields the same number of batches (hosts with fewer examples pad more), as multi-host
    collectives need.
    """
    check(cfg)
    ds, n = _eval_examples(cfg, split, process_index, process_count)
    most = -(-num_examples(cfg, split) // process_count)  # the largest share decides the number of batches
    num_batches = -(-most // batch_size)
    batches = ds.batch(batch_size).as_numpy_iterator()
    for _ in range(num_batches):
        batch = next(batches, None)
        images, labels = (batch if batch is not None else (np.zeros((0,)), np.zeros((0,), np.int32)))
        real = len(labels)
        if real < batch_size:
            shape = (batch_size - real, cfg.image_size, cfg.image_size, cfg.num_channels)
            images = np.concatenate([np.asarray(images, np.float32).reshape((real,) + shape[1:]), np.zeros(shape, np.float32)])
            labels = np.concatenate([labels.astype(np.int32), np.zeros(batch_size - real, np.int32)])
        mask = np.arange(batch_size) < real
        yield {"image": np.asarray(images, np.float32), "label": np.asarray(labels, np.int32), "mask": mask}
