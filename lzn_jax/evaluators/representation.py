"""Representation evaluators: linear probing of encoder features (case study 2) and embedding export."""

from __future__ import annotations

import os

import jax
import numpy as np

from lzn_jax import data, parallel, writers
from lzn_jax.evaluators import common, export, linear_probe


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


def _split_fn(config, split, batch_size):
    return lambda: data.eval_iterator(config.data, split=split, batch_size=batch_size)


class LinearProbe:
    """eval/linear_probe_accuracy (features without the head, as the paper), _head, and _pixels (baseline)."""

    def __init__(self, *, task, config, mesh, workdir=None, writer=None, modes=("no_head", "head"),
                 include_pixels=True, lr=3e-4, num_epochs=300, batch_size=256, weight_decay=0.0, standardize=False,
                 seed=0):  # fmt: skip
        if not hasattr(task, "embed"):
            raise ValueError("linear_probe needs an encoder task (representation or simclr).")
        eval_batch = config.eval_batch_size
        self.config = config
        self.probe = linear_probe.LinearProbeEvaluator(
            _Embedder(task, mesh), _split_fn(config, "train", eval_batch), _split_fn(config, "test", eval_batch),
            num_classes=config.num_classes, modes=modes,
            include_pixels=include_pixels, lr=lr, num_epochs=num_epochs, batch_size=batch_size,
            weight_decay=weight_decay, standardize=standardize, seed=seed,
        )  # fmt: skip

    def run(self, params, step):
        yield from self.probe.run(params)

    def compile_targets(self) -> dict:
        embed = self.probe.embed_fn
        return {f"embed_{mode}": embed.compile_target(self.config, mode == "head") for mode in self.probe.modes}


class ExportEmbeddings:
    """Writes the embeddings (and labels) of a split as .npy files under workdir/embeddings."""

    def __init__(self, *, task, config, mesh, workdir, writer=None, split="test", apply_head=False, num_per_class=None):
        if not hasattr(task, "embed"):
            raise ValueError("export needs an encoder task (representation or simclr).")
        self.embed, self.workdir, self.config = _Embedder(task, mesh), workdir, config
        self.batches = _split_fn(config, split, config.eval_batch_size)
        self.split, self.apply_head, self.num_per_class = split, apply_head, num_per_class

    def run(self, params, step):
        path = export.export_embeddings(
            self.embed, self.batches, params, os.path.join(self.workdir, "embeddings"), split=self.split,
            apply_head=self.apply_head, num_per_class=self.num_per_class, step=step,
        )  # fmt: skip
        with writers.gfile().GFile(path, "rb") as f:
            yield "eval/exported_embeddings", float(np.load(f).shape[0])

    def compile_targets(self) -> dict:
        return {"embed": self.embed.compile_target(self.config, self.apply_head)}
