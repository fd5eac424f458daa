"""sklearn's bundled 8x8 handwritten digits (1797 images, 10 classes): the CPU default, no download needed.

A fixed stratified split (scikit-learn, seed 0) holds out `data.digits_test_fraction` of every class: 1437 train
and 360 test images at the default 0.2. The 8x8 images stay in memory; the pipeline resizes them to
`data.image_size`.
"""

import functools

import ml_collections
import numpy as np
import tensorflow as tf
from sklearn import datasets, model_selection

from lzn_jax.data.base import IndexedSource

_SPLIT_SEED = 0
_MAX_PIXEL = 16.0  # digits pixels are ink counts in 0..16


def build(cfg: ml_collections.ConfigDict) -> "DigitsSource":
    return DigitsSource(cfg)


@functools.lru_cache(maxsize=4)
def split_indices(test_fraction: float) -> dict[str, np.ndarray]:
    """{"train": [N_train], "test": [N_test]} sorted indices into `load_digits()`, stratified by class, seed 0."""
    labels = datasets.load_digits().target
    train, test = model_selection.train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=_SPLIT_SEED
    )
    return {"train": np.sort(train), "test": np.sort(test)}


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    """images [1797, 8, 8, 1] float32 in [0, 1], labels [1797] int32."""
    digits = datasets.load_digits()
    images = (digits.images / _MAX_PIXEL).astype(np.float32)[..., None]
    return images, digits.target.astype(np.int32)


class DigitsSource(IndexedSource):
    num_classes = 10

    def __init__(self, cfg: ml_collections.ConfigDict):
        images, labels = _all_digits()
        indices = split_indices(cfg.digits_test_fraction)
        self._arrays = {}
        for logical, key in (("train", "train_split"), ("test", "test_split")):
            name = cfg[key]
            if name not in indices:
                raise ValueError(f"data.{key}={name!r}: the digits source has the splits {sorted(indices)}.")
            self._arrays[logical] = (images[indices[name]], labels[indices[name]])

    def num_examples(self, split: str) -> int:
        return len(self._arrays[split][1])

    def records(self, split: str, indices: np.ndarray) -> tf.data.Dataset:
        images, labels = self._arrays[split]
        return tf.data.Dataset.from_tensor_slices({"image": images[indices], "label": labels[indices]})

    def decode(self, record):
        return record["image"], record["label"]
