"""Generation evaluators: sample grids, reconstructions by inversion, FID, and a classifier's view of samples."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from lzn_jax import data, parallel
from lzn_jax.evaluators import common, fid, images, linear_probe
from lzn_jax.tasks import protocol


def _check_generation(task, name):
    protocol.require(task, protocol.GENERATES, message=f"The {name} evaluator needs a generation task (a decoder); "
                     "config.task is something else.")  # fmt: skip


class _Sampler:
    """Jitted, row-sharded `task.sample`: labels [B] (or a count) -> images [B, H, W, C] as numpy."""

    def __init__(self, task, mesh, sampler):
        self.task, self.mesh, self.sampler = task, mesh, sampler
        self._fn = common.sharded_fn(self._local, mesh, num_row_args=2)

    def _local(self, params, labels, keys, *, axis_name):
        del axis_name  # samples are independent rows
        return self.task.sample(params, jax.random.wrap_key_data(keys[0]), labels, sampler=self.sampler)

    def __call__(self, params, key, labels) -> np.ndarray:
        labels = jnp.asarray(labels, jnp.int32)
        devices = self.mesh.shape[parallel.DATA]
        pad = -len(labels) % devices
        padded = jnp.concatenate([labels, jnp.zeros((pad,), jnp.int32)])
        keys = jax.random.key_data(jax.random.split(key, devices))  # one key per device's rows
        keys = jnp.repeat(keys, len(padded) // devices, axis=0)
        rows = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(parallel.DATA))
        out = self._fn(params, jax.device_put(padded, rows), jax.device_put(keys, rows))
        return common.fetch(out)[: len(labels)]

    def compile_target(self, num: int):
        """(jitted function, abstract row inputs) of a call with `num` labels (the scale rehearsal compiles it)."""
        key_shape = jax.random.key_data(jax.random.key(0)).shape
        return self._fn, common.row_structs(self.mesh, num, ((), jnp.int32), (key_shape, jnp.uint32))


class Samples:
    """PNG grid of samples (one row per class when conditional), per sampler; also sent to TensorBoard."""

    def __init__(self, *, task, config, mesh, workdir, writer=None, samplers=("euler",), per_class=10, num=64,
                 weights=None, seed=0):  # fmt: skip
        _check_generation(task, "samples")
        self.task, self.workdir, self.writer, self.seed = task, workdir, writer, seed
        self.config, self.weights = config, common.check_weights(weights)
        self.samplers = {name: _Sampler(task, mesh, name) for name in samplers}
        if task.conditional:
            self.labels, self.nrow = np.repeat(np.arange(task.num_classes), per_class), per_class
        else:
            self.labels, self.nrow = np.zeros(num, np.int32), int(np.ceil(np.sqrt(num)))

    def run(self, params, step):
        for name, sample in self.samplers.items():
            out = sample(params, jax.random.key(self.seed), self.labels)
            path = os.path.join(self.workdir, "samples", f"{name}_{step:08d}.png")
            if jax.process_index() == 0:
                grid = images.save_grid(out, path, nrow=self.nrow)
                if self.writer is not None:
                    self.writer.write_images(step, {f"samples/{name}": grid[None]})
            yield f"eval/samples_{name}_std", float(np.std(out))

    def host_memory_bytes(self) -> int:
        """Peak host RAM per process, in bytes: the samples of one sampler, len(labels) · H·W·C · 4, and their grid."""
        return 2 * len(self.labels) * common.image_bytes(self.config)

    def compile_targets(self) -> dict:
        return {name: sample.compile_target(len(self.labels)) for name, sample in self.samplers.items()}


class Reconstruction:
    """Data → latent → initial noise by running the decoder ODE backwards → data again; the L2 error.

    As the official `Reconstructions` metric: per image, sqrt(Σ (x̂ − x)²) averaged over `num` images of the
    train split, with `repeats` latents per image (different priors).
    """

    def __init__(self, *, task, config, mesh, workdir, writer=None, sampler="euler", num=64, repeats=2, weights=None,
                 seed=0):  # fmt: skip
        _check_generation(task, "reconstruction")
        protocol.require(task, protocol.ZONES, protocol.INVERTS,
                         message="The reconstruction evaluator needs an image encoder (LZN latents).")  # fmt: skip
        self.task, self.config, self.mesh, self.workdir, self.writer = task, config, mesh, workdir, writer
        self.sampler, self.num, self.repeats, self.seed = sampler, num, repeats, seed
        self.weights = common.check_weights(weights)
        self._fn = common.sharded_fn(self._local, mesh, num_row_args=4)

    def _local(self, params, x, labels, mask, prior, *, axis_name):
        latent = self.task.image_latents(params, x, prior, axis_name=axis_name, mask=mask)
        known = labels if protocol.can(self.task, protocol.CLASSIFIES) else None
        noise = self.task.invert(params, x, latent, known, sampler=self.sampler)
        return self.task.decode(params, noise, latent, known, sampler=self.sampler)

    def run(self, params, step):
        batch = next(common.split_batches(self.config, "train", _round_up(self.num, self.mesh), self.mesh))
        x, mask = common.fetch(batch["image"]), common.fetch(batch["mask"])
        errors, rows = [], [images.to_uint8(x)]
        for r in range(self.repeats):
            key = jax.random.fold_in(jax.random.key(self.seed), r)
            prior = jax.device_put(jax.random.normal(key, (x.shape[0], self.task.latent_dim)), batch["image"].sharding)
            recon = common.fetch(self._fn(params, batch["image"], batch["label"], batch["mask"], prior))
            errors.append(np.sqrt(np.sum((recon - x) ** 2, axis=(1, 2, 3)))[mask.astype(bool)])
            rows.append(images.to_uint8(recon))
        if jax.process_index() == 0:
            strip = np.stack(rows, axis=1)[: self.num].reshape((-1,) + x.shape[1:])  # each image, then its recons
            path = os.path.join(self.workdir, "reconstructions", f"{self.sampler}_{step:08d}.png")
            images.save_grid(strip.astype(np.float32) / 127.5 - 1.0, path, nrow=self.repeats + 1)
        yield f"eval/reconstruction_l2_{self.sampler}", float(np.mean(np.concatenate(errors)))

    def host_memory_bytes(self) -> int:
        """Peak host RAM per process, in bytes: the batch and one reconstruction as float32 (num · H·W·C · 4 each),
        the uint8 strip of (repeats + 1) · num images, and the tf.data batches of the pass."""
        image = common.image_bytes(self.config)
        num = _round_up(self.num, self.mesh)
        return 2 * num * image + (self.repeats + 1) * num * image // 4 + common.pipeline_bytes(self.config, num)

    def compile_targets(self) -> dict:
        rows = common.image_rows(self.config, self.mesh, _round_up(self.num, self.mesh), self.task.latent_dim)
        return {"reconstruct": (self._fn, rows)}


def _round_up(n, mesh):
    devices = mesh.shape[parallel.DATA] * jax.process_count()
    return -(-n // devices) * devices


class SampleClassifierAccuracy:
    """How recognisable label-conditional samples are: a classifier trained on the real train split (linear on
    pixels, `linear_probe.fit_linear_probe`) classifies `per_class` samples of every class.

    Yields eval/sample_accuracy_{sampler} and, to read it against, the classifier's accuracy on the real test
    split (eval/sample_classifier_test_accuracy). No official metric: a check for small data sets (digits).

    Host memory per process (`host_memory_bytes`): both splits' pixels, (N_train + N_test) · H·W·C · 4 bytes,
    held for the run, plus the samples; above `max_host_bytes` the evaluator is refused when it is built.
    """

    def __init__(self, *, task, config, mesh, workdir=None, writer=None, sampler="euler", per_class=50, seed=0,
                 num_epochs=100, batch_size=64, lr=1e-3, max_host_bytes=common.DEFAULT_MAX_HOST_BYTES):  # fmt: skip
        _check_generation(task, "sample_accuracy")
        if not task.conditional:
            raise ValueError("sample_accuracy needs a label-conditional generation task.")
        self.task, self.sample, self.seed = task, _Sampler(task, mesh, sampler), seed
        self.sampler_name = sampler
        self.labels = np.repeat(np.arange(task.num_classes), per_class)
        self.probe = dict(num_classes=task.num_classes, num_epochs=num_epochs, batch_size=batch_size, lr=lr)
        self.config = config
        if self.host_memory_bytes() > max_host_bytes:
            raise ValueError(
                f"sample_accuracy would hold {self.host_memory_bytes() / 2**30:.1f} GiB of pixels on the host (limit "
                f"max_host_bytes={max_host_bytes / 2**30:.1f} GiB); it is meant for small data sets."
            )
        self.train = data.load_arrays(config.data, "train")
        self.test = data.load_arrays(config.data, "test")

    def run(self, params, step):
        generated = self.sample(params, jax.random.key(self.seed), self.labels)
        flat = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
        train_x, train_y = flat(self.train[0]), self.train[1]
        on_samples = linear_probe.fit_linear_probe(train_x, train_y, flat(generated), self.labels, **self.probe)
        on_real = linear_probe.fit_linear_probe(train_x, train_y, flat(self.test[0]), self.test[1], **self.probe)
        yield f"eval/sample_accuracy_{self.sampler_name}", on_samples["accuracy"]
        yield "eval/sample_classifier_test_accuracy", on_real["accuracy"]

    def host_memory_bytes(self) -> int:
        """Peak host RAM per process, in bytes (the formula in the class docstring)."""
        rows = data.num_examples(self.config.data, "train") + data.num_examples(self.config.data, "test")
        return (rows + len(self.labels)) * common.image_bytes(self.config)


class FID:
    """FID of samples against the train split (official `CleanFID` / `RFFID` metrics), for each sampler.

    Yields `eval/{metric}_{pipeline}_{sampler}` (metric "fid" unless named otherwise; pipeline "clean" or "rf").
    `num_samples` images from each sampler (labels cycle through the classes) against the train split's
    statistics, cached in the workdir. `num_reference_samples=0`: the whole split (official CIFAR-10: 50 000
    against 50 000); N > 0: the first N examples of `torch.randperm(len(split))` seeded with
    `reference_shuffle_seed` (official 256 px sets: 1 024 against the first 1 024 of its seed-0 sampler order),
    or the first N in file order with `reference_shuffle_seed=None`.

    Differences from the official metric: the official draws the generated labels from the reference images'
    labels (the same counts for CIFAR-10's balanced 50 000); its order of the files is that of its dataset
    class: the same sorted file list for image folders, torchvision's order for CIFAR-10, not TFDS's (only a
    subset's membership depends on it, and CIFAR-10 uses all of it).

    Host memory per process (`host_memory_bytes`): `fid.FIDEvaluator.host_memory_bytes` with the reference pass
    of `common.ordered_split` (a subset: min(N · H·W·C · 4, max_host_bytes)) or of tf.data (the whole split),
    plus one batch of samples.
    """

    def __init__(self, *, task, config, mesh, workdir, writer=None, inception_weights="", samplers=("rk45", "euler"),
                 metric="fid", num_samples=50000, split="train", pipelines=("clean",), num_reference_samples=0,
                 reference_shuffle_seed=0, batch_size=None, max_host_bytes=common.DEFAULT_MAX_HOST_BYTES,
                 weights=None, seed=0):  # fmt: skip
        _check_generation(task, "fid")
        if not inception_weights:
            raise ValueError(
                "The fid evaluator needs config.evals.<name>.inception_weights: a local copy of the FID Inception "
                "weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or its .npz conversion)."
            )
        samplers = (samplers,) if isinstance(samplers, str) else tuple(samplers)
        self.samplers = {name: _Sampler(task, mesh, name) for name in samplers}
        self.config, self.metric, self.weights = config, metric, common.check_weights(weights)
        self.batch_size = batch_size or config.eval_batch_size
        self.max_host_bytes = max_host_bytes
        # The first num_reference_samples of the split's seed-`reference_shuffle_seed` torch.randperm (None: the
        # split's own order), drawn when the reference split is first read.
        self.num_reference_samples = num_reference_samples or 0
        self.reference_shuffle_seed = None if not num_reference_samples else reference_shuffle_seed
        self.fid = fid.FIDEvaluator(
            None, functools.partial(self._reference_batches, split), inception_weights=inception_weights,
            cache_dir=workdir, dataset=config.data.name or config.data.source, split=split,
            image_size=config.data.image_size, num_samples=num_samples, batch_size=self.batch_size,
            pipelines=tuple(pipelines), num_reference_samples=num_reference_samples or None,
            reference_tag="" if self.reference_shuffle_seed is None else f"torchperm{reference_shuffle_seed}", seed=seed,
        )  # fmt: skip
        self.num_classes = task.num_classes

    def reference_order(self, split: str) -> np.ndarray | None:
        """Indices [num_reference_samples] of the reference subset in the split, or None (the split's own order)."""
        if self.reference_shuffle_seed is None:
            return None
        total = data.num_examples(self.config.data, split)
        return common.torch_randperm(total, self.reference_shuffle_seed, self.num_reference_samples)

    def _reference_batches(self, split):
        order = self.reference_order(split)
        if order is None:
            return data.eval_iterator(self.config.data, split=split, batch_size=self.batch_size)
        return common.ordered_split(self.config, split, order, self.batch_size, self.max_host_bytes)

    def host_memory_bytes(self) -> int:
        """Peak host RAM of one run per process, in bytes (the formula in the class docstring)."""
        if self.reference_shuffle_seed is None:
            reference_pass = common.pipeline_bytes(self.config, self.batch_size)
        else:
            ordered = self.num_reference_samples * common.image_bytes(self.config)
            reference_pass = min(ordered, max(self.max_host_bytes, self.batch_size * common.image_bytes(self.config)))
        samples = self.batch_size * common.image_bytes(self.config)
        return self.fid.host_memory_bytes(max(reference_pass, samples))

    def run(self, params, step):
        for name, sample in self.samplers.items():
            def sample_fn(params, key, num, sample=sample):
                return sample(params, key, np.arange(num) % self.num_classes)

            for pipeline, value in self.fid.scores(params, sample_fn).items():
                yield f"eval/{self.metric}_{pipeline}_{name}", value
