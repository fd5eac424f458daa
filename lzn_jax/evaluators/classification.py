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

from lzn_jax import data, parallel
from lzn_jax.evaluators import common


class ClassAccuracy:
    """Args: `classify_fn` (`predict.ClassifyFn`'s signature), `data_cfg` (config.data), `mesh`,
    `eval_batch_size` (the default `batch_size`); the rest are `config.evals.<name>` settings."""

    def __init__(self, *, classify_fn, data_cfg, mesh, eval_batch_size, splits=("test", "train"), stds=(1.0,),
                 batch_size: int | None = None, metric="accuracy", shuffle_seed: int | None = 0,
                 max_host_bytes=common.DEFAULT_MAX_HOST_BYTES, weights: tuple[str, ...] | None = None,
                 seed=0):  # fmt: skip
        self.classify_fn, self.data_cfg, self.mesh = classify_fn, data_cfg, mesh
        self.splits, self.stds = tuple(splits), tuple(float(s) for s in stds)
        self.batch_size = batch_size or eval_batch_size
        self.seed, self.shuffle_seed, self.max_host_bytes, self.metric = seed, shuffle_seed, max_host_bytes, metric
        self.weights = common.check_weights(weights)
        parallel.check_batch_size(self.batch_size, mesh)

    def batches(self, split: str):
        """Global batches of `split` with `mask`, in the evaluation order (see the module docstring)."""
        if self.shuffle_seed is None:
            yield from common.split_batches(self.data_cfg, split, self.batch_size, self.mesh)
            return
        order = common.torch_randperm(data.num_examples(self.data_cfg, split), self.shuffle_seed)
        for batch in common.ordered_split(self.data_cfg, split, order, self.batch_size, self.max_host_bytes):
            yield parallel.global_batch(common.host_share(batch), self.mesh)

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the module docstring)."""
        pipeline = common.pipeline_bytes(self.data_cfg, self.batch_size)
        if self.shuffle_seed is None:
            return pipeline
        return max(self.max_host_bytes, self.batch_size * common.image_bytes(self.data_cfg)) + pipeline

    def accuracies(self, params, split: str, std: float) -> tuple[float, float]:
        """(accuracy, accuracy with class weights) on `split` with prior × std."""
        correct = np.zeros(2)
        total = 0
        key = jax.random.fold_in(jax.random.key(self.seed), self.splits.index(split) if split in self.splits else 99)
        for i, batch in enumerate(self.batches(split)):
            shape = (batch["image"].shape[0], self.classify_fn.latent_dim)
            prior = std * jax.random.normal(jax.random.fold_in(key, i), shape)
            prior = jax.device_put(prior, batch["image"].sharding.update(spec=jax.sharding.PartitionSpec("data")))
            preds = self.classify_fn(params, batch["image"], batch["label"], batch["mask"], prior)
            labels, mask = common.fetch(batch["label"]), common.fetch(batch["mask"])
            for j, pred in enumerate(preds):
                correct[j] += np.sum((common.fetch(pred) == labels) & mask)
            total += int(mask.sum())
        return tuple(correct / total)

    def compile_targets(self) -> dict:
        return {"predict": self.classify_fn.compile_target(self.batch_size, data.image_shape(self.data_cfg))}

    def run(self, params, step):
        for split in self.splits:
            prefix = f"eval/{self.metric}" if split == "test" else f"eval/{split}_{self.metric}"
            for i, std in enumerate(self.stds):
                suffix = "" if i == 0 else f"_std{std:g}"
                plain, weighted = self.accuracies(params, split, std)
                yield f"{prefix}{suffix}", plain
                yield f"{prefix}{suffix}_with_class_weights", weighted
