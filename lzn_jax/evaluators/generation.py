"""Generation evaluators: sample grids, reconstructions by inversion, and a classifier's view of samples (FID:
`fid.FID`)."""

from __future__ import annotations

import os

import jax
import numpy as np

from lzn_jax import data, parallel
from lzn_jax.evaluators import common, images, linear_probe


class Samples:
    """PNG grid of samples (one row per class when conditional), per sampler; also sent to TensorBoard.

    Args: `sample_fn` (`predict.SampleFn`'s signature, with `conditional` and `num_classes`), `data_cfg`
    (config.data), `workdir`, `writer`; the rest are `config.evals.<name>` settings.
    """

    def __init__(self, *, sample_fn, data_cfg, workdir, writer=None, samplers=("euler",), per_class=10, num=64,
                 weights: tuple[str, ...] | None = None, seed=0):  # fmt: skip
        self.sample_fn, self.data_cfg, self.workdir, self.writer, self.seed = sample_fn, data_cfg, workdir, writer, seed
        self.samplers, self.weights = tuple(samplers), common.check_weights(weights)
        if sample_fn.conditional:
            self.labels, self.nrow = np.repeat(np.arange(sample_fn.num_classes), per_class), per_class
        else:
            self.labels, self.nrow = np.zeros(num, np.int32), int(np.ceil(np.sqrt(num)))

    def run(self, params, step):
        for name in self.samplers:
            out = self.sample_fn(params, jax.random.key(self.seed), self.labels, name)
            path = os.path.join(self.workdir, "samples", f"{name}_{step:08d}.png")
            if jax.process_index() == 0:
                grid = images.save_grid(out, path, nrow=self.nrow)
                if self.writer is not None:
                    self.writer.write_images(step, {f"samples/{name}": grid[None]})
            yield f"eval/samples_{name}_std", float(np.std(out))

    def host_memory_bytes(self) -> int:
        """Peak host RAM per process, in bytes: the samples of one sampler, len(labels) · H·W·C · 4, and their grid."""
        return 2 * len(self.labels) * common.image_bytes(self.data_cfg)

    def compile_targets(self) -> dict:
        return {name: self.sample_fn.compile_target(len(self.labels), name) for name in self.samplers}


class Reconstruction:
    """Data → latent → initial noise by running the decoder ODE backwards → data again; the L2 error.

    As the official `Reconstructions` metric: per image, sqrt(Σ (x̂ − x)²) averaged over `num` images of the
    train split, with `repeats` latents per image (different priors).

    Args: `reconstruct_fn` (`predict.ReconstructFn`'s signature, with `latent_dim`), `data_cfg`, `mesh`,
    `workdir`; the rest are `config.evals.<name>` settings.
    """

    def __init__(self, *, reconstruct_fn, data_cfg, mesh, workdir, sampler="euler", num=64, repeats=2,
                 weights: tuple[str, ...] | None = None, seed=0):  # fmt: skip
        self.reconstruct_fn, self.data_cfg, self.mesh, self.workdir = reconstruct_fn, data_cfg, mesh, workdir
        self.sampler, self.num, self.repeats, self.seed = sampler, num, repeats, seed
        self.weights = common.check_weights(weights)

    def run(self, params, step):
        batch = next(common.split_batches(self.data_cfg, "train", _round_up(self.num, self.mesh), self.mesh))
        x, mask = common.fetch(batch["image"]), common.fetch(batch["mask"])
        errors, rows = [], [images.to_uint8(x)]
        for r in range(self.repeats):
            key = jax.random.fold_in(jax.random.key(self.seed), r)
            prior = jax.random.normal(key, (x.shape[0], self.reconstruct_fn.latent_dim))
            prior = jax.device_put(prior, batch["image"].sharding)
            recon = self.reconstruct_fn(params, batch["image"], batch["label"], batch["mask"], prior, self.sampler)
            recon = common.fetch(recon)
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
        image = common.image_bytes(self.data_cfg)
        num = _round_up(self.num, self.mesh)
        return 2 * num * image + (self.repeats + 1) * num * image // 4 + common.pipeline_bytes(self.data_cfg, num)

    def compile_targets(self) -> dict:
        num = _round_up(self.num, self.mesh)
        return {"reconstruct": self.reconstruct_fn.compile_target(num, data.image_shape(self.data_cfg), self.sampler)}


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

    def __init__(self, *, conditional_sample_fn, data_cfg, sampler="euler", per_class=50, seed=0, num_epochs=100,
                 batch_size=64, lr=1e-3, max_host_bytes=common.DEFAULT_MAX_HOST_BYTES):  # fmt: skip
        sample_fn = conditional_sample_fn
        if not sample_fn.conditional:
            raise ValueError("sample_accuracy needs a label-conditional generation task.")
        self.sample_fn, self.sampler, self.seed, self.data_cfg = sample_fn, sampler, seed, data_cfg
        num_classes = sample_fn.num_classes
        self.labels = np.repeat(np.arange(num_classes), per_class)
        self.probe = dict(num_classes=num_classes, num_epochs=num_epochs, batch_size=batch_size, lr=lr)
        if self.host_memory_bytes() > max_host_bytes:
            raise ValueError(
                f"sample_accuracy would hold {self.host_memory_bytes() / 2**30:.1f} GiB of pixels on the host (limit "
                f"max_host_bytes={max_host_bytes / 2**30:.1f} GiB); it is meant for small data sets."
            )
        self.train = data.load_arrays(data_cfg, "train")
        self.test = data.load_arrays(data_cfg, "test")

    def run(self, params, step):
        generated = self.sample_fn(params, jax.random.key(self.seed), self.labels, self.sampler)
        flat = lambda x: np.asarray(x).reshape(len(x), -1)  # noqa: E731
        train_x, train_y = flat(self.train[0]), self.train[1]
        on_samples = linear_probe.fit_linear_probe(train_x, train_y, flat(generated), self.labels, **self.probe)
        on_real = linear_probe.fit_linear_probe(train_x, train_y, flat(self.test[0]), self.test[1], **self.probe)
        yield f"eval/sample_accuracy_{self.sampler}", on_samples["accuracy"]
        yield "eval/sample_classifier_test_accuracy", on_real["accuracy"]

    def host_memory_bytes(self) -> int:
        """Peak host RAM per process, in bytes (the formula in the class docstring)."""
        rows = data.num_examples(self.data_cfg, "train") + data.num_examples(self.data_cfg, "test")
        return (rows + len(self.labels)) * common.image_bytes(self.data_cfg)
