"""Class accuracy of case study 3: image → latent → reverse flow over label anchors → nearest label anchor.

As the official `ClassAccuracy` and `TunableStdClassAccuracy`: test and train accuracy, each without and with
class weights (the frequencies of the evaluated batch's labels multiply the label zones' densities), for one or
several prior standard deviations (the noise the image's forward flow starts from, × std). The first std gives
`eval/accuracy` (official ClassAccuracy: 1.0); the others `eval/accuracy_std{s}`. std 0 makes an image's latent
deterministic: the flow of its anchor itself.

A sample's latent depends on the batch it is encoded with — every image in the batch is an anchor of the
mixture — so the accuracy depends on `batch_size` (the official uses 2000). Padding rows of the last batch get
weight 0 in the mixture, so they change no other sample's latent.
"""

from __future__ import annotations

import jax
import numpy as np

from lzn_jax import losses
from lzn_jax.evaluators import common


class ClassAccuracy:
    def __init__(self, *, task, config, mesh, workdir=None, writer=None, splits=("test", "train"), stds=(1.0,),
                 batch_size=None, seed=0):  # fmt: skip
        if not getattr(task, "conditional", False):
            raise ValueError("The class_accuracy evaluator needs a conditional generation task (label anchors).")
        self.task, self.config, self.mesh = task, config, mesh
        self.splits, self.stds = tuple(splits), tuple(float(s) for s in stds)
        self.batch_size = batch_size or config.eval_batch_size
        self.seed = seed
        self._predict = common.sharded_fn(self._local_predict, mesh, num_row_args=4)

    def _local_predict(self, params, images, labels, mask, prior, *, axis_name):
        latents = self.task.image_latents(params, images, prior, axis_name=axis_name, mask=mask)
        weights = losses.class_weights(labels, self.task.num_classes, axis_name=axis_name, mask=mask)
        return self.task.classify_latents(params, latents), self.task.classify_latents(params, latents, weights)

    def accuracies(self, params, split: str, std: float) -> tuple[float, float]:
        """(accuracy, accuracy with class weights) on `split` with prior × std."""
        correct = np.zeros(2)
        total = 0
        key = jax.random.fold_in(jax.random.key(self.seed), self.splits.index(split) if split in self.splits else 99)
        for i, batch in enumerate(common.split_batches(self.config, split, self.batch_size, self.mesh)):
            prior = std * jax.random.normal(jax.random.fold_in(key, i), (batch["image"].shape[0], self.task.latent_dim))
            prior = jax.device_put(prior, batch["image"].sharding.update(spec=jax.sharding.PartitionSpec("data")))
            preds = self._predict(params, batch["image"], batch["label"], batch["mask"], prior)
            labels, mask = common.fetch(batch["label"]), common.fetch(batch["mask"])
            for j, pred in enumerate(preds):
                correct[j] += np.sum((common.fetch(pred) == labels) & mask)
            total += int(mask.sum())
        return tuple(correct / total)

    def compile_targets(self) -> dict:
        rows = common.image_rows(self.config, self.mesh, self.batch_size, self.task.latent_dim)
        return {"predict": (self._predict, rows)}

    def run(self, params, step):
        for split in self.splits:
            prefix = "eval/accuracy" if split == "test" else f"eval/{split}_accuracy"
            for i, std in enumerate(self.stds):
                suffix = "" if i == 0 else f"_std{std:g}"
                plain, weighted = self.accuracies(params, split, std)
                yield f"{prefix}{suffix}", plain
                yield f"{prefix}{suffix}_with_class_weights", weighted
