"""Representation evaluators: linear probing of encoder features (case study 2) and embedding export."""

from __future__ import annotations

import os

import jax
import numpy as np

from lzn_jax import data, files, parallel
from lzn_jax.evaluators import common, export, linear_probe
from lzn_jax.tasks import protocol as task_protocol  # `protocol` is also the linear probe's argument


class _Embedder:
    """`embed_fn(params, images [B,H,W,C] numpy, apply_head) -> features [B, F]`, row-sharded over the mesh.

    Every host passes the same full batch (eval passes read all of a split on every host), takes its rows and
    gets all features back, so every host fits the same probe.
    """

    def __init__(self, task, mesh):
        self.mesh = mesh
        self._fns = {
            head: common.sharded_fn(lambda p, x, *, axis_name, h=head: task.embed(p, x, apply_head=h), mesh, 1)
            for head in (True, False)
        }

    def __call__(self, params, images, apply_head):
        images = np.asarray(images)
        devices = self.mesh.shape[parallel.DATA] * jax.process_count()
        pad = -len(images) % devices
        padded = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        per_host = len(padded) // jax.process_count()
        mine = padded[jax.process_index() * per_host : (jax.process_index() + 1) * per_host]
        features = self._fns[bool(apply_head)](params, parallel.global_batch({"x": mine}, self.mesh)["x"])
        return common.fetch(features)[: len(images)]

    def compile_target(self, config, apply_head: bool):
        """(jitted function, abstract images) of a call on `config.eval_batch_size` images (scale rehearsal)."""
        image = (config.data.image_size, config.data.image_size, config.data.num_channels)
        return self._fns[bool(apply_head)], common.row_structs(self.mesh, config.eval_batch_size, (image, np.float32))


def feature_width(task, config, apply_head: bool) -> int:
    """Width F of `task.embed`'s features, from abstract shapes (nothing is computed)."""
    batch = {"image": jax.ShapeDtypeStruct((1, *data.image_shape(config.data)), np.float32)}
    if config.data.num_views == 2:
        batch["image2"] = batch["image"]
    params = jax.eval_shape(task.init, jax.random.key(0), batch)
    return int(jax.eval_shape(lambda p, x: task.embed(p, x, apply_head=apply_head), params, batch["image"]).shape[-1])


def _split_fn(config, split, batch_size):
    return lambda: data.eval_iterator(config.data, split=split, batch_size=batch_size)


class LinearProbe:
    """Linear-probe accuracy of encoder features (case study 2; the official `LinearProbing` metric).

    `protocol="augmented"` (the paper's, default): every epoch a fresh shuffle of the train split with the
    run's training augmentation (`data.augmentation`, one view: the SimCLR crop/flip/jitter/grey/blur view for
    ImageNet) flows through the encoder one global minibatch of `batch_size` at a time into
    `linear_probe.fit_streamed_probe`; features stay on the devices. Metrics `eval/linear_probe_accuracy`
    (no head, the paper's number), `_head`, `_pixels`. `protocol="frozen"` (fast): features of the un-augmented
    splits are computed once, held on the host, and probed (`linear_probe.LinearProbeEvaluator`); metrics
    `eval/linear_probe_frozen_accuracy...`.

    Differences from the official metric: the official feeds the two-view ImageNet training set
    (`DoubleImageNet`) to the probe; here each image gives one augmented view per epoch. The official logs the
    test accuracy after every epoch; here the test split is scored after the last epoch. The official data order
    is torch's sampler shuffle (seed 100 + epoch); here it is the pipeline's (seed, epoch) shuffle, with the last
    partial batch dropped as there. The pixel baseline (`include_pixels`, off by default) is no official metric.

    Host memory per process (`host_memory_bytes`): augmented, the tf.data batches of one pass,
    PIPELINE_BATCHES · batch_size / processes · H·W·C · 4 bytes; frozen, (N_train + N_test) · 4 bytes times
    (the sum of the modes' feature widths, plus H·W·C with the pixel baseline). A frozen probe above
    `max_host_bytes` is refused when it is built.
    """

    def __init__(self, *, task, config, mesh, workdir=None, writer=None, protocol="augmented", modes=("no_head",),
                 include_pixels=False, lr=3e-4, num_epochs=300, batch_size=8192, weight_decay=0.0, standardize=False,
                 max_host_bytes=common.DEFAULT_MAX_HOST_BYTES, weights=None, seed=0):  # fmt: skip
        task_protocol.require(task, task_protocol.EMBEDS,
                              message="linear_probe needs an encoder task (representation or simclr).")  # fmt: skip
        if protocol not in linear_probe.PROTOCOLS:
            raise ValueError(f"linear_probe protocol={protocol!r}; expected one of {linear_probe.PROTOCOLS}.")
        if protocol == linear_probe.AUGMENTED and standardize:
            raise ValueError("standardize needs the train split's feature statistics: use protocol='frozen'.")
        unknown = [m for m in modes if m not in linear_probe.MODES]
        if unknown:
            raise ValueError(f"Unknown linear-probe modes {unknown}; expected a subset of {linear_probe.MODES}.")
        self.task, self.config, self.mesh, self.protocol = task, config, mesh, protocol
        self.modes, self.include_pixels, self.batch_size = tuple(modes), include_pixels, batch_size
        self.weights = common.check_weights(weights)
        self.fit_kwargs = dict(num_classes=config.num_classes, lr=lr, weight_decay=weight_decay, seed=seed)
        self.num_epochs, self.seed = num_epochs, seed
        if protocol == linear_probe.FROZEN:
            needed = self.host_memory_bytes()
            if needed > max_host_bytes:
                raise ValueError(
                    f"The frozen linear probe would hold {needed / 2**30:.1f} GiB of features on the host (limit "
                    f"max_host_bytes={max_host_bytes / 2**30:.1f} GiB): use protocol='augmented' (streamed), drop "
                    "include_pixels, or raise max_host_bytes."
                )
            eval_batch = config.eval_batch_size
            self.probe = linear_probe.LinearProbeEvaluator(
                _Embedder(task, mesh), _split_fn(config, "train", eval_batch), _split_fn(config, "test", eval_batch),
                modes=modes, include_pixels=include_pixels, num_epochs=num_epochs, batch_size=batch_size,
                standardize=standardize, **self.fit_kwargs,
            )  # fmt: skip
        else:
            self.view_config = config.data.copy_and_resolve_references()
            self.view_config.num_views = 1
            parallel.check_batch_size(batch_size, mesh)
            self._embed = {
                mode: common.sharded_fn(
                    lambda p, x, *, axis_name, h=(mode == "head"): task.embed(p, x, apply_head=h), mesh, 1
                )
                for mode in self.modes
            }  # fmt: skip
            self._pixel_result = None

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the class docstring)."""
        if self.protocol == linear_probe.AUGMENTED:
            return common.pipeline_bytes(self.config, self.batch_size)
        rows = data.num_examples(self.config.data, "train") + data.num_examples(self.config.data, "test")
        width = sum(feature_width(self.task, self.config, m == "head") for m in self.modes) + (common.image_bytes(self.config) // 4 if self.include_pixels else 0)
        return 4 * rows * width

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches of one probe epoch (the train split's remainder dropped); reads the split's size."""
        return data.steps_per_epoch(self.view_config, batch_size=self.batch_size)

    def _train_stream(self, params, feature_fns, steps_per_epoch):
        batches = data.train_iterator(
            self.view_config, batch_size=self.batch_size, seed=self.seed, process_index=jax.process_index(),
            process_count=jax.process_count(),
        )  # fmt: skip
        for _ in range(self.num_epochs * steps_per_epoch):
            batch = parallel.global_batch(next(batches), self.mesh)
            yield {name: fn(params, batch["image"]) for name, fn in feature_fns.items()}, batch["label"]

    def _test_stream(self, params, feature_fns):
        for batch in common.split_batches(self.config, "test", self.config.eval_batch_size, self.mesh):
            features = {name: fn(params, batch["image"]) for name, fn in feature_fns.items()}
            yield features, batch["label"], batch["mask"]

    def _streamed(self, params) -> dict[str, dict[str, float]]:
        feature_fns = dict(self._embed)
        if self.include_pixels and self._pixel_result is None:  # params-independent: fitted once, in the same pass
            feature_fns["pixels"] = lambda p, x: x.reshape(x.shape[0], -1)
        results = {}
        if feature_fns:
            steps = self.steps_per_epoch
            results = linear_probe.fit_streamed_probe(
                self._train_stream(params, feature_fns, steps), self._test_stream(params, feature_fns),
                steps_per_epoch=steps, **self.fit_kwargs,
            )  # fmt: skip
        if self.include_pixels:
            self._pixel_result = results.pop("pixels", self._pixel_result)
            results["pixels"] = self._pixel_result
        return results

    def run(self, params, step):
        if self.protocol == linear_probe.FROZEN:
            yield from self.probe.run(params)
        else:
            yield from linear_probe.metrics(self._streamed(params), self.protocol)

    def compile_targets(self) -> dict:
        """{name: (jitted function, abstract row inputs)} of the functions one run compiles (scale rehearsal)."""
        if self.protocol == linear_probe.FROZEN:
            embed = self.probe.embed_fn
            return {f"embed_{mode}": embed.compile_target(self.config, mode == "head") for mode in self.probe.modes}
        rows = common.row_structs(self.mesh, self.batch_size, (data.image_shape(self.config.data), np.float32))
        return {f"embed_{mode}": (fn, rows) for mode, fn in self._embed.items()}


class ExportEmbeddings:
    """Writes the embeddings (and labels) of a split as .npy files under workdir/embeddings (official
    `Representation` metric; see `export.py`).

    Host memory per process (`host_memory_bytes`): the split's features, N · F · 4 bytes, plus its tf.data batches.
    """

    def __init__(self, *, task, config, mesh, workdir, writer=None, split="test", apply_head=False, num_per_class=None):
        task_protocol.require(task, task_protocol.EMBEDS,
                              message="export needs an encoder task (representation or simclr).")  # fmt: skip
        self.task, self.config, self.embed, self.workdir = task, config, _Embedder(task, mesh), workdir
        self.batches = _split_fn(config, split, config.eval_batch_size)
        self.split, self.apply_head, self.num_per_class = split, apply_head, num_per_class

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the class docstring)."""
        rows = data.num_examples(self.config.data, self.split)
        width = feature_width(self.task, self.config, self.apply_head)
        return 4 * rows * width + common.pipeline_bytes(self.config, self.config.eval_batch_size)

    def run(self, params, step):
        path = export.export_embeddings(
            self.embed, self.batches, params, os.path.join(self.workdir, "embeddings"), split=self.split,
            apply_head=self.apply_head, num_per_class=self.num_per_class, step=step,
        )  # fmt: skip
        with files.gfile().GFile(path, "rb") as f:
            yield "eval/exported_embeddings", float(np.load(f).shape[0])

    def compile_targets(self) -> dict:
        return {"embed": self.embed.compile_target(self.config, self.apply_head)}
