"""Input pipelines: deterministic, host-sharded numpy batches of NHWC float32 images in [-1, 1].

Public API (every function takes the `config.data` ConfigDict built from `default_config()`):
  `train_iterator`  endless augmented batches, a pure function of (seed, step): resuming at `start_step=k`
                    yields exactly the batches an uninterrupted run yields from step k on.
  `eval_iterator`   one pass over a split, no augmentation, last batch padded, boolean `"mask"`.
  `load_arrays`     a whole split as two numpy arrays (small datasets: linear probes, notebooks).
  `batch_spec`      the shapes and dtypes of a batch (its keys are defined here), without reading data.
  `num_examples`, `num_classes`, `image_shape`, `steps_per_epoch`.

`batch_size` is always the global batch size; each of `process_count` hosts gets `batch_size // process_count`.
Splits are named logically, `"train"` or `"test"`; `data.train_split` / `data.test_split` say what they are
in the source (TFDS split strings, sub-folders of an image folder).

TensorFlow (tf.data) is imported on first use, so config files can import `default_config` cheaply.
"""

import importlib
import math
from typing import Iterator

import ml_collections
import numpy as np

# The one place a `data.source` string is resolved: source name -> module under lzn_jax/data with `build(cfg)`.
_SOURCES = {
    "digits": "lzn_jax.data.digits",
    "tfds": "lzn_jax.data.tfds_source",
    "image_folder": "lzn_jax.data.image_folder",
}
AUGMENTATIONS = ("none", "flip", "affine", "simclr")
LOGICAL_SPLITS = ("train", "test")


def default_config() -> ml_collections.ConfigDict:
    """Every data key with its default: the bundled sklearn digits, 16x16 grayscale, no augmentation."""
    return ml_collections.ConfigDict(
        {
            # Where the examples come from.
            "source": "digits",  # "digits" | "tfds" | "image_folder"
            "name": "digits",  # TFDS name (e.g. "cifar10", "imagenet2012", "mnist:3.0.1"); a label otherwise
            "data_dir": "",  # TFDS data dir or image-folder root; local or gs://; "" = TFDS default dir
            "train_split": "train",  # TFDS split string / sub-folder of data_dir ("" = data_dir itself)
            "test_split": "test",  # e.g. "validation" for imagenet2012, "val/cat" for AFHQ-Cat
            "image_key": "image",  # TFDS feature holding the image
            "label_key": "label",  # TFDS feature holding the class label
            "digits_test_fraction": 0.2,  # stratified held-out share of digits (seed 0): 1437 train / 360 test
            # What a batch looks like.
            "image_size": 16,  # output height = width
            "num_channels": 1,  # 1 (grayscale) or 3 (RGB; grayscale sources are replicated)
            "num_classes": 10,  # the dataset's class count, or 1 to train unconditionally (labels all 0)
            "num_views": 1,  # 2 adds "image2", a second augmented view of the same example
            "eval_crop_fraction": 1.0,  # eval: resize the shorter side to image_size / this, then center crop
            "shuffle_buffer": 10_000,  # TFDS only: examples in the shuffle buffer (array sources shuffle fully)
            # tf.data's autotuner. False: each map runs on every CPU core this process may use and 2 batches are
            # prefetched. True: TensorFlow tunes both, but its tuning thread sleeps 10 ms doubling to 60 s between
            # rounds, and closing a live iterator (every training run's end) waited for it to wake: 10.7 s idle
            # per 20-step digits run on average, 0.2 s without (docs/results/bench_input.json).
            "autotune": False,
            # Train augmentation: "none"; "flip" (random horizontal flip, the official generation pipelines);
            # "affine" (small rotation / translation / zoom, no flip: digits); "simclr" (the official ImageNet
            # two-view pipeline: random resized crop, flip, colour jitter, grayscale, blur).
            "augmentation": "none",
            "affine_max_degrees": 10.0,  # rotation drawn from U[-d, d] degrees
            "affine_max_translate": 0.1,  # shift drawn from U[-t, t] * image_size per axis
            "affine_scale_min": 0.9,  # zoom drawn from U[min, max] (>1 zooms in)
            "affine_scale_max": 1.1,
            "crop_scale_min": 0.08,  # random resized crop: area fraction U[min, max]
            "crop_scale_max": 1.0,
            "crop_ratio_min": 3.0 / 4.0,  # aspect ratio (w / h), log-uniform in [min, max]
            "crop_ratio_max": 4.0 / 3.0,
            "jitter_prob": 0.8,  # colour jitter applied with this probability, its four ops in random order
            "jitter_brightness": 0.8,  # factor U[1 - b, 1 + b]
            "jitter_contrast": 0.8,
            "jitter_saturation": 0.8,
            "jitter_hue": 0.2,  # hue shift U[-h, h] of the colour wheel
            "grayscale_prob": 0.2,
            "blur_prob": 1.0,  # the official pipeline blurs every view
            "blur_sigma_min": 0.1,  # in pixels of the output image
            "blur_sigma_max": 2.0,
            "blur_kernel_fraction": 0.1,  # kernel size: the odd number nearest below fraction * image_size + 1
        }
    )


def train_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless host-local train batches from global step `start_step` on.

    Yields `{"image": [b, H, W, C] float32 in [-1, 1], "label": [b] int32}` (+ `"image2"` when
    `num_views == 2`), b = batch_size // process_count. Each epoch is a fresh shuffle seeded by (seed, epoch)
    and holds `steps_per_epoch` steps (the remainder is dropped); augmentation seeds come from (seed, step,
    position in the global batch, view). Missing data raises here, before the first batch.
    """
    _check_int(seed, "seed", minimum=0)
    _check_int(start_step, "start_step", minimum=0)
    local_batch = _local_batch_size(batch_size, process_index, process_count)
    source = _build_source(data_cfg)
    return _pipeline().train_batches(
        source, data_cfg, batch_size=batch_size, local_batch=local_batch, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count,
    )


def eval_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    split: str,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One deterministic pass over `split` ("train" or "test"), no augmentation.

    Yields `{"image": [b, H, W, C], "label": [b], "mask": [b] bool}`; padding rows are zeros with mask False.
    Every host yields the same number of batches, ceil(ceil(N / process_count) / b).
    """
    _check_split(split)
    local_batch = _local_batch_size(batch_size, process_index, process_count)
    source = _build_source(data_cfg)
    return _pipeline().eval_batches(
        source, data_cfg, split=split, local_batch=local_batch,
        process_index=process_index, process_count=process_count,
    )


def load_arrays(data_cfg: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split in memory: images [N, H, W, C] float32 in [-1, 1], labels [N] int32 (eval order)."""
    images, labels = [], []
    for batch in eval_iterator(data_cfg, split=split, batch_size=512):
        images.append(batch["image"][batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    return np.concatenate(images), np.concatenate(labels)


# The data settings that decide which images `eval_iterator` yields for a split, and how they look. Statistics
# cached per split (FID's reference statistics) are keyed by them: a cache keyed by the dataset's name alone was
# reused for other data under the same name (another data_dir, split string, channel count or crop).
_EVAL_IMAGE_KEYS = ("source", "name", "data_dir", "image_key", "digits_test_fraction", "image_size", "num_channels",
                    "eval_crop_fraction")  # fmt: skip


def eval_images_key(data_cfg: ml_collections.ConfigDict, split: str) -> dict:
    """{setting: value} that determines `eval_iterator(data_cfg, split=split, ...)`'s images (not their batching)."""
    _check_split(split)
    key = {name: data_cfg[name] for name in _EVAL_IMAGE_KEYS}
    key["split"] = data_cfg[f"{split}_split"]
    return key


def batch_spec(data_cfg: ml_collections.ConfigDict, batch_size: int) -> dict:
    """{key: jax.ShapeDtypeStruct} of a batch as `train_iterator` yields it, from the config alone (no data read).

    "image" [B, H, W, C] float32, "label" [B] int32, and "image2" (the second view) when data.num_views = 2.
    """
    import jax  # deferred like TensorFlow: config files import this package for `default_config`

    shape = (batch_size, data_cfg.image_size, data_cfg.image_size, data_cfg.num_channels)
    spec = {"image": jax.ShapeDtypeStruct(shape, np.float32), "label": jax.ShapeDtypeStruct(shape[:1], np.int32)}
    if data_cfg.num_views == 2:
        spec["image2"] = spec["image"]
    return spec


def num_examples(data_cfg: ml_collections.ConfigDict, split: str) -> int:
    """Examples in the whole `split` ("train" or "test"), over all hosts."""
    _check_split(split)
    return _build_source(data_cfg).num_examples(split)


def num_classes(data_cfg: ml_collections.ConfigDict) -> int:
    """Classes the labels take: `data.num_classes`, checked against the dataset (1 = unconditional)."""
    _build_source(data_cfg)
    return data_cfg.num_classes


def image_shape(data_cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """(H, W, C) of every image in a batch."""
    validate_config(data_cfg)
    return (data_cfg.image_size, data_cfg.image_size, data_cfg.num_channels)


def steps_per_epoch(data_cfg: ml_collections.ConfigDict, *, batch_size: int) -> int:
    """Train steps in one epoch of global batches of `batch_size` (the remainder of each epoch is dropped)."""
    _check_positive_int(batch_size, "batch_size")
    return _pipeline().steps_per_epoch(_build_source(data_cfg).num_examples("train"), batch_size)


def validate_config(data_cfg: ml_collections.ConfigDict) -> None:
    """Raises a ValueError naming the first bad or missing `config.data` key."""
    expected, given = set(default_config().keys()), set(data_cfg.keys())
    if expected - given:
        raise ValueError(f"config.data lacks {sorted(expected - given)}; build it from lzn_jax.data.default_config().")
    if given - expected:
        raise ValueError(f"config.data has unknown keys {sorted(given - expected)}; known: {sorted(expected)}.")
    c = data_cfg
    if c.source not in _SOURCES:
        raise ValueError(f"data.source={c.source!r} is unknown; choose one of {sorted(_SOURCES)}.")
    if c.augmentation not in AUGMENTATIONS:
        raise ValueError(f"data.augmentation={c.augmentation!r} is unknown; choose one of {AUGMENTATIONS}.")
    _check_positive_int(c.image_size, "data.image_size")
    _check_positive_int(c.num_classes, "data.num_classes")
    _check_positive_int(c.shuffle_buffer, "data.shuffle_buffer")
    if not isinstance(c.autotune, bool):
        raise ValueError(f"data.autotune={c.autotune!r} must be True or False.")
    _check_choice(c.num_channels, "data.num_channels", (1, 3))
    _check_choice(c.num_views, "data.num_views", (1, 2))
    _check_interval(c.eval_crop_fraction, "data.eval_crop_fraction", 0.0, 1.0, closed_low=False)
    _check_interval(c.digits_test_fraction, "data.digits_test_fraction", 0.0, 1.0, closed_low=False, closed_high=False)
    for key in ("jitter_prob", "grayscale_prob", "blur_prob", "blur_kernel_fraction"):
        _check_interval(c[key], f"data.{key}", 0.0, 1.0)
    for key in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
        _check_interval(c[key], f"data.{key}", 0.0, 1.0)
    _check_interval(c.jitter_hue, "data.jitter_hue", 0.0, 0.5)
    _check_interval(c.affine_max_degrees, "data.affine_max_degrees", 0.0, 180.0)
    _check_interval(c.affine_max_translate, "data.affine_max_translate", 0.0, 1.0)
    _check_range(c, "affine_scale", 0.0, math.inf)
    _check_range(c, "crop_scale", 0.0, 1.0)
    _check_range(c, "crop_ratio", 0.0, math.inf)
    _check_range(c, "blur_sigma", 0.0, math.inf)


def _build_source(data_cfg):
    """Validates the config and opens its source; a missing dataset raises here with what to download where."""
    validate_config(data_cfg)
    _pipeline()  # configures TensorFlow before any source touches it
    source = importlib.import_module(_SOURCES[data_cfg.source]).build(data_cfg)
    if data_cfg.num_classes not in (1, source.num_classes):
        raise ValueError(
            f"data.num_classes={data_cfg.num_classes}, but {data_cfg.source} {data_cfg.name!r} has "
            f"{source.num_classes} classes{source.classes_note()}; set data.num_classes={source.num_classes} (or 1 "
            "for unconditional)."
        )
    return source


def _pipeline():
    # Deferred so that importing this package (e.g. for `default_config`) does not load TensorFlow.
    return importlib.import_module("lzn_jax.data.pipeline")


def _local_batch_size(batch_size, process_index, process_count):
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(process_count, "process_count")
    if not (isinstance(process_index, (int, np.integer)) and 0 <= process_index < process_count):
        raise ValueError(f"process_index={process_index!r} must be an int in [0, process_count={process_count}).")
    if batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} (global) must be divisible by process_count={process_count}; "
            f"use a multiple of {process_count}."
        )
    return batch_size // process_count


def _check_split(split):
    if split not in LOGICAL_SPLITS:
        raise ValueError(f"split={split!r} must be one of {LOGICAL_SPLITS} (data.train_split / data.test_split).")


def _check_int(value, name, *, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}.")


def _check_positive_int(value, name):
    _check_int(value, name, minimum=1)


def _check_choice(value, name, choices):
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}.")


def _check_interval(value, name, low, high, *, closed_low=True, closed_high=True):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low <= value if closed_low else low < value) and (value <= high if closed_high else value < high)
    if not ok:
        brackets = ("[" if closed_low else "(") + f"{low}, {high}" + ("]" if closed_high else ")")
        raise ValueError(f"{name}={value!r} must be a number in {brackets}.")


def _check_range(cfg, prefix, low, high):
    lo, hi = cfg[f"{prefix}_min"], cfg[f"{prefix}_max"]
    _check_interval(lo, f"data.{prefix}_min", low, high, closed_low=False)
    _check_interval(hi, f"data.{prefix}_max", low, high, closed_low=False)
    if lo > hi:
        raise ValueError(f"data.{prefix}_min={lo} must not exceed data.{prefix}_max={hi}.")
