"""Where examples come from: scikit-learn's digits, TFDS datasets, and folders of images.

Small datasets (digits, and TFDS datasets with `in_memory=True`, e.g. CIFAR-10) are loaded once as arrays, so
batches can be drawn by index. Large ones (ImageNet, image folders) stream as `tf.data` datasets read by each
host from its own shard. A dataset that is not there fails at start with what to download and where.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class Arrays(NamedTuple):
    """A split held in memory: images [N, H, W, C] float32 in [0, 1] (already image_size), labels [N] int32."""

    images: np.ndarray
    labels: np.ndarray


# ------------------------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=8)
def digits(split: str, image_size: int, num_channels: int) -> Arrays:
    """scikit-learn's 8×8 digits: a fixed stratified split (20 % test, seed 0), resized to image_size."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits has the splits 'train' and 'test'; got {split!r}.")
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1] in [0, 1]
    labels = bunch.target.astype(np.int32)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    resized = tf.image.resize(images[idx], (image_size, image_size), method="bilinear", antialias=True).numpy()
    resized = np.clip(resized, 0.0, 1.0)
    if num_channels == 3:
        resized = np.repeat(resized, 3, axis=-1)
    elif num_channels != 1:
        raise ValueError(f"digits are grey: data.num_channels must be 1 or 3 (replicated); got {num_channels}.")
    return Arrays(resized.astype(np.float32), labels[idx])


# ------------------------------------------------------------------------------------------- TFDS


def tfds_builder(name: str, data_dir: str):
    """The TFDS builder of a dataset name; an error naming the problem when TFDS does not know it."""
    try:
        return tfds.builder(name, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise FileNotFoundError(f"data.name={name!r} is not a TFDS dataset ({error}). Check the name.") from error


def check_tfds(name: str, data_dir: str, split: str) -> None:
    """Fails with what to download and where when the split cannot be read (opening it is the test)."""
    builder = tfds_builder(name, data_dir)
    try:
        builder.as_dataset(split=split)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as error:
        where = data_dir or "~/tensorflow_datasets"
        if name.startswith("imagenet2012"):
            how = (
                f"ImageNet must be downloaded by hand: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
                f"{where}/downloads/manual/ and run `tfds build {name} --data_dir={where}`"
            )
        else:
            how = f"run `tfds build {name} --data_dir={where}` on a machine with internet access and copy {where} here"
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in data.data_dir={where!r}: {how}.") from error
    except ValueError as error:  # an unknown split name
        raise ValueError(f"TFDS dataset {name!r} cannot read split {split!r}: {error}") from error


def tfds_split_size(builder, split: str) -> int:
    """Examples in a split, from the dataset info (or by counting, where the info lacks it, as under mock data)."""
    try:
        return builder.info.splits[split].num_examples
    except KeyError:
        return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


def _to_unit(image):
    return tf.cast(image, tf.float32) / 255.0


@functools.lru_cache(maxsize=8)
def tfds_arrays(name: str, data_dir: str, split: str, image_size: int, num_channels: int) -> Arrays:
    """A whole TFDS split in memory (for small datasets such as CIFAR-10)."""
    from lzn_jax.data import augment

    builder = tfds_builder(name, data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (augment.fit(_channels(_to_unit(ex["image"]), num_channels), image_size),
                            tf.cast(ex.get("label", 0), tf.int32)))  # fmt: skip
    images, labels = [], []
    for image, label in tfds.as_numpy(ds.batch(1024)):
        images.append(image)
        labels.append(label)
    return Arrays(np.concatenate(images).astype(np.float32), np.concatenate(labels).astype(np.int32))


def tfds_stream(name, data_dir, split, num_channels, process_index, process_count):
    """This host's shard of a TFDS split as (image [h, w, c] in [0, 1], label) pairs, in file order."""
    builder = tfds_builder(name, data_dir)
    host_split = split
    if process_count > 1:
        host_split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    read = tfds.ReadConfig(shuffle_seed=None, interleave_cycle_length=1)  # deterministic file order
    ds = builder.as_dataset(split=host_split, shuffle_files=False, read_config=read)
    num = tfds_split_size(builder, host_split)
    return ds.map(lambda ex: (_channels(_to_unit(ex["image"]), num_channels), tf.cast(ex.get("label", 0), tf.int32))), num


# ------------------------------------------------------------------------------------------- image folders


def image_files(root: str) -> list[str]:
    """Every image under `root`, sorted (the official listing); an error if there is none."""
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root!r} does not exist: download the dataset (e.g. AFHQ from "
            "https://github.com/clovaai/stargan-v2) and set data.data_dir to its folder of images."
        )
    files = []
    for directory, _, names in tf.io.gfile.walk(root):
        files += [os.path.join(directory, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise FileNotFoundError(f"Image folder {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return sorted(files)


def folder_split_root(data_dir: str, split: str) -> str:
    """`<data_dir>/<split>` when that folder exists, else `data_dir` itself (one unsplit folder)."""
    candidate = os.path.join(data_dir, split)
    return candidate if tf.io.gfile.isdir(candidate) else data_dir


def folder_stream(data_dir, split, num_channels, process_index, process_count):
    """This host's share of a folder of images (every process_count-th file), unlabelled (label 0)."""
    files = image_files(folder_split_root(data_dir, split))[process_index::process_count]

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return _channels(_to_unit(image), num_channels), tf.constant(0, tf.int32)

    return tf.data.Dataset.from_tensor_slices(files).map(load, num_parallel_calls=tf.data.AUTOTUNE), len(files)


def _channels(image, num_channels):
    if image.shape[-1] == num_channels:
        return image
    if num_channels == 1:
        return tf.image.rgb_to_grayscale(image)
    return tf.tile(image, [1, 1, num_channels])
