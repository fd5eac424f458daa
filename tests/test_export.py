"""Exporting a split's embeddings and labels as .npy files."""

import os

import numpy as np

from lzn_jax.evaluators.export import export_embeddings


def _batches(images, labels, batch_size):
    for start in range(0, len(images), batch_size):
        n = len(images[start : start + batch_size])
        pad = batch_size - n
        yield {
            "image": np.concatenate([images[start : start + n], np.zeros((pad, *images.shape[1:]), np.float32)]),
            "label": np.concatenate([labels[start : start + n], np.full(pad, -1)]),
            "mask": np.arange(batch_size) < n,
        }


def _embed(params, images, apply_head):
    """A stand-in encoder: [B,H,W,C] -> [B, 3], the head adding `params`."""
    feats = images.reshape(len(images), -1)[:, :3]
    return feats + params if apply_head else feats


def test_exports_every_real_example_in_order(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 2, 2, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 10)
    path = export_embeddings(
        _embed, lambda: _batches(images, labels, 4), 5.0, tmp_path / "repr", split="test", apply_head=True, step=1200
    )
    assert path == os.path.join(tmp_path / "repr", "representation_head_test_000001200.npy")
    feats = np.load(path)
    assert feats.dtype == np.float32
    np.testing.assert_allclose(feats, images.reshape(10, -1)[:, :3] + 5.0)
    np.testing.assert_array_equal(np.load(path.replace(".npy", "_labels.npy")), labels)


def test_first_examples_per_class_ordered_by_class(tmp_path):
    labels = np.array([2, 0, 1, 0, 2, 0, 1, 2, 2])
    images = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1).repeat(3, axis=-1)
    path = export_embeddings(
        _embed, lambda: _batches(images, labels, 4), 0.0, tmp_path, split="test", apply_head=False, num_per_class=2
    )
    assert os.path.basename(path) == "representation_no_head_test.npy"
    np.testing.assert_array_equal(np.load(path)[:, 0], [1, 3, 2, 6, 0, 4])  # indices of the first two per class
    np.testing.assert_array_equal(np.load(path.replace(".npy", "_labels.npy")), [0, 0, 1, 1, 2, 2])
