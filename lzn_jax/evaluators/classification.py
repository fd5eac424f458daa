"""Class accuracy of case study 3: image → latent → reverse flow over label anchors → nearest label anchor.

As the official `ClassAccuracy` and `TunableStdClassAccuracy`: test and train accuracy, each without and with
class weights (the frequencies of the evaluated batch's labels multiply the label zones' densities), for one or
several prior standard deviations (the noise the image's forward flow starts from, × std). The first std gives
`eval/{metric}` (metric "accuracy" by default; official ClassAccuracy: std 1.0); the others
`eval/{metric}_std{s}`; the train split `eval/train_{metric}...`. std 0 makes an image's latent
deterministic: the flow of its anchor itself.

A sample's latent depends on the batch it is encoded with — every image in the batch is an anchor of the
mixture — so the accuracy depends on `batch_size` (the official uses 2000) and on which images share a batch:
as the official sampler, a split is read in the order of `torch.randperm(N)` seeded with `shuffle_seed` (0), so
batch i holds examples perm[i·B : (i+1)·B] (the official's devices read perm[rank::W] and gather their
per-device batches into that same 2000-image mixture). `shuffle_seed=None` reads the split in its own order.
Padding rows of the last batch get weight 0 in the mixture, so they change no other sample's latent.

Differences from the official metric: the permutation applies to the source's order of a split, and TFDS's
CIFAR-10 order is not torchvision's, so the mixtures hold other images (random 2000-image draws all the same).
The official encodes each split twice, with other prior noise for the class-weighted accuracy; here both
accuracies use the same latents. The official drops a last partial batch; here it is padded (N % B = 0 for
CIFAR-10 at B = 2000, so the two agree there).

Host memory per process (`host_memory_bytes`, an upper bound that needs no data): a shuffled split is buffered by
`common.ordered_split`, min(N · H·W·C · 4, max(max_host_bytes, B · H·W·C · 4)) bytes (CIFAR-10 train: 614 MB, one
pass), plus the tf.data batches it reads with.
"""

from __future__ import annotations

import jax
import numpy as np

from lzn_jax import data, losses, parallel
from lzn_jax.evaluators import common
from lzn_jax.tasks import protocol


class ClassAccuracy:
    def __init__(self, *, task, config, mesh, workdir=None, writer=None, splits=("test", "train"), stds=(1.0,),
                 batch_size=None, metric="accuracy", shuffle_seed=0, max_host_bytes=common.DEFAULT_MAX_HOST_BYTES, weights=None,
                 seed=0):  # fmt: skip
        message = "The class_accuracy evaluator needs a conditional generation task (label anchors)."
        protocol.require(task, protocol.CLASSIFIES, protocol.ZONES, message=message)
        self.task, self.config, self.mesh = task, config, mesh
        self.splits, self.stds = tuple(splits), tuple(float(s) for s in stds)
        self.batch_size = batch_size or config.eval_batch_size
        self.seed, self.shuffle_seed, self.max_host_bytes, self.metric = seed, shuffle_seed, max_host_bytes, metric
        self.weights = common.check_weights(weights)
        parallel.check_batch_size(self.batch_size, mesh)
        self._predict = common.sharded_fn(self._local_predict, mesh, num_row_args=4)

    def _local_predict(self, params, images, labels, mask, prior, *, axis_name):
        latents = self.task.image_latents(params, images, prior, axis_name=axis_name, mask=mask)
        weights = losses.class_weights(labels, self.task.num_classes, axis_name=axis_name, mask=mask)
        return self.task.classify_latents(params, latents), self.task.classify_latents(params, latents, weights)

    def batches(self, split: str):
        """Global batches of `split` with `mask`, in the evaluation order (see the module docstring)."""
        if self.shuffle_seed is None:
            yield from common.split_batches(self.config, split, self.batch_size, self.mesh)
            return
        order = common.torch_randperm(data.num_examples(self.config.data, split), self.shuffle_seed)
        for batch in common.ordered_split(self.config, split, order, self.batch_size, self.max_host_bytes):
            yield parallel.global_batch(common.host_share(batch), self.mesh)

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the module docstring)."""
        pipeline = common.pipeline_bytes(self.config, self.batch_size)
        if self.shuffle_seed is None:
            return pipeline
        return max(self.max_host_bytes, self.batch_size * common.image_bytes(self.config)) + pipeline

    def accuracies(self, params, split: str, std: float) -> tuple[float, float]:
        """(accuracy, accuracy with class weights) on `split` with prior × std."""
        correct = np.zeros(2)
        total = 0
        key = jax.random.fold_in(jax.random.key(self.seed), self.splits.index(split) if split in self.splits else 99)
        for i, batch in enumerate(self.batches(split)):
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
            prefix = f"eval/{self.metric}" if split == "test" else f"eval/{split}_{self.metric}"
            for i, std in enumerate(self.stds):
                suffix = "" if i == 0 else f"_std{std:g}"
                plain, weighted = self.accuracies(params, split, std)
                yield f"{prefix}{suffix}", plain
                yield f"{prefix}{suffix}_with_class_weights", weighted
