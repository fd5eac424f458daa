"""Exporting encoder representations of a split as .npy files (the official `Representation` metric).

The official metric keeps the first 50 test images of each class, ordered by class, and saves their no-head
features and labels; `num_per_class` reproduces that selection, `None` exports the whole split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np

from lzn_jax import data, files
from lzn_jax.evaluators import common


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


class ExportEmbeddings:
    """Writes the embeddings (and labels) of a split as .npy files under workdir/embeddings (the official
    `Representation` metric; see `export_embeddings`). Yields `eval/exported_embeddings`, the rows written.

    Host memory per process (`host_memory_bytes`): the split's features, N · F · 4 bytes, plus its tf.data batches.

    Args: `embed_fn` (`predict.EmbedFn`'s), `data_cfg` (config.data), `workdir`, `eval_batch_size`; the rest are
    `config.evals.<name>` settings.
    """

    def __init__(self, *, embed_fn, data_cfg, workdir, eval_batch_size, split="test", apply_head=False,
                 num_per_class: int | None = None):  # fmt: skip
        self.embed_fn, self.data_cfg, self.workdir, self.batch_size = embed_fn, data_cfg, workdir, eval_batch_size
        self.split, self.apply_head, self.num_per_class = split, apply_head, num_per_class

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the class docstring)."""
        rows = data.num_examples(self.data_cfg, self.split)
        width = self.embed_fn.feature_width(data.image_shape(self.data_cfg), self.data_cfg.num_views, self.apply_head)
        return 4 * rows * width + common.pipeline_bytes(self.data_cfg, self.batch_size)

    def run(self, params, step):
        batches = lambda: data.eval_iterator(self.data_cfg, split=self.split, batch_size=self.batch_size)  # noqa: E731
        path = export_embeddings(
            self.embed_fn, batches, params, os.path.join(self.workdir, "embeddings"), split=self.split,
            apply_head=self.apply_head, num_per_class=self.num_per_class, step=step,
        )  # fmt: skip
        with files.gfile().GFile(path, "rb") as f:
            yield "eval/exported_embeddings", float(np.load(f).shape[0])

    def compile_targets(self) -> dict:
        shape = data.image_shape(self.data_cfg)
        return {"embed": self.embed_fn.compile_target(self.batch_size, shape, self.apply_head)}
