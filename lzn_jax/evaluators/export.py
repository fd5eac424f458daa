"""Exporting encoder representations of a split as .npy files (the official `Representation` metric).

The official metric keeps the first 50 test images of each class, ordered by class, and saves their no-head
features and labels; `num_per_class` reproduces that selection, `None` exports the whole split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from lzn_jax import files


def _first_per_class(features: np.ndarray, labels: np.ndarray, num_per_class: int):
    """The first `num_per_class` rows of each class, class-major (classes ascending, data order within)."""
    order = np.concatenate([np.flatnonzero(labels == c)[:num_per_class] for c in np.unique(labels)])
    return features[order], labels[order]


def export_embeddings(
    embed_fn: Callable,
    batches_fn: Callable[[], Iterable[dict]],
    params,
    out_dir: str | os.PathLike,
    *,
    split: str,
    apply_head: bool,
    num_per_class: int | None = None,
    step: int | None = None,
) -> str:
    """Writes a split's embeddings [N, F] (float32) and labels [N] (int) as .npy files; returns the embeddings' path.

    Files: `{out_dir}/representation_{head|no_head}_{split}[_{step:09d}].npy` and the same name ending in
    `_labels.npy`.

    Args:
      embed_fn: `(params, images [B,H,W,C], apply_head: bool) -> features [B, F]`.
      batches_fn: `() -> iterable of {"image", "label", optional "mask"}`, one pass over the split.
      params: the model params handed to `embed_fn`.
      out_dir: output directory (created if absent).
      split: split name, used in the file names.
      apply_head: export the projection-head output (True) or the backbone feature (False).
      num_per_class: keep only the first this-many examples of each class, ordered by class (official: 50).
      step: training step, appended to the file names so that exports of several steps coexist.
    """
    features, labels = [], []
    for batch in batches_fn():
        keep = np.asarray(batch["mask"], bool) if "mask" in batch else slice(None)
        features.append(np.asarray(embed_fn(params, batch["image"], apply_head), np.float32)[keep])
        labels.append(np.asarray(batch["label"])[keep])
    if not features:
        raise ValueError(f"batches_fn yielded no batches for split {split!r}.")
    features, labels = np.concatenate(features), np.concatenate(labels)
    if num_per_class is not None:
        features, labels = _first_per_class(features, labels, num_per_class)

    fs = files.gfile()  # the workdir may be a gs:// bucket
    fs.makedirs(os.fspath(out_dir))
    stem = f"representation_{'head' if apply_head else 'no_head'}_{split}"
    if step is not None:
        stem += f"_{step:09d}"
    path = os.path.join(os.fspath(out_dir), f"{stem}.npy")
    for file_path, array in ((path, features), (os.path.join(os.fspath(out_dir), f"{stem}_labels.npy"), labels)):
        with fs.GFile(file_path, "wb") as f:
            np.save(f, array)
    return path
