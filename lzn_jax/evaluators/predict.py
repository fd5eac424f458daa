"""The prediction functions evaluators take (big_vision's `predict_fn`), built here and only here from a task.

An evaluator names the functions it needs as constructor arguments (`embed_fn`, `sample_fn`, `classify_fn`,
`reconstruct_fn`); `evaluators.build` makes each from the run's task and mesh with `make`, after checking that
the task has the capabilities it rests on (`NEEDS`). So no evaluator sees the task or asks it what it can do,
and a test can hand an evaluator any callable with the same signature.

Each function runs as jit(shard_map) over the mesh's data axis (`common.sharded_fn`): params whole (gathered
where FSDP shards them), rows split over devices. The `compile_target` methods give the scale rehearsal the
jitted function and abstract inputs of one call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lzn_jax import losses, parallel
from lzn_jax.evaluators import common
from lzn_jax.tasks import protocol

# Constructor argument -> (the task capabilities it needs, what a task must have, in words for the error).
NEEDS = {
    "embed_fn": ((protocol.EMBEDS,), "an image encoder (config.task representation or simclr)"),
    "sample_fn": ((protocol.GENERATES,), "an image decoder (config.task generation)"),
    "conditional_sample_fn": ((protocol.GENERATES, protocol.CLASSIFIES), "a label-conditional image decoder (config.conditional=True)"),
    "classify_fn": ((protocol.CLASSIFIES, protocol.ZONES), "an image encoder and label anchors (a conditional generation task)"),
    "reconstruct_fn": ((protocol.GENERATES, protocol.ZONES, protocol.INVERTS), "an image encoder and an image decoder"),
}  # fmt: skip


def check(fn_name: str, task, *, who: str) -> None:
    """ValueError naming `who` (the evaluator asking) and what `task` lacks when it cannot provide the prediction
    function `fn_name` (a key of NEEDS). Needs no network: `configlib.check` calls it before anything is built."""
    capabilities, what = NEEDS[fn_name]
    protocol.require(task, *capabilities, message=f"{who} needs {what}; config.task={type(task).__name__} has "
                     f"capabilities {sorted(task.capabilities)}.")  # fmt: skip


def make(fn_name: str, task, mesh, *, who: str):
    """The prediction function `fn_name` (a key of NEEDS) of `task` on `mesh` (after `check`)."""
    check(fn_name, task, who=who)
    return {"embed_fn": EmbedFn, "sample_fn": SampleFn, "conditional_sample_fn": SampleFn, "classify_fn": ClassifyFn,
            "reconstruct_fn": ReconstructFn}[fn_name](task, mesh)  # fmt: skip


class EmbedFn:
    """Encoder features: `(params, images [B,H,W,C], apply_head) -> features [B, F]`.

    `__call__` takes the same full numpy batch on every host (a split read whole on each host) and returns all
    features as numpy on every host; `rows` takes and returns global row-sharded arrays (features stay on the
    devices).
    """

    def __init__(self, task, mesh):
        self.mesh, self._task = mesh, task
        self._fns = {
            head: common.sharded_fn(lambda p, x, *, axis_name, h=head: task.embed(p, x, apply_head=h), mesh, 1)
            for head in (True, False)
        }

    def rows(self, params, images: jax.Array, apply_head: bool) -> jax.Array:
        return self._fns[bool(apply_head)](params, images)

    def __call__(self, params, images, apply_head: bool) -> np.ndarray:
        rows, count = common.rows_of_full_batch(images, self.mesh)
        return common.fetch(self.rows(params, rows, apply_head))[:count]

    def feature_width(self, image_shape: tuple[int, int, int], num_views: int, apply_head: bool) -> int:
        """Width F of the features, from abstract shapes (nothing is computed)."""
        batch = {"image": jax.ShapeDtypeStruct((1, *image_shape), np.float32)}
        if num_views == 2:
            batch["image2"] = batch["image"]
        params = jax.eval_shape(self._task.init, jax.random.key(0), batch)
        embed = lambda p, x: self._task.embed(p, x, apply_head=apply_head)  # noqa: E731
        return int(jax.eval_shape(embed, params, batch["image"]).shape[-1])

    def compile_target(self, num: int, image_shape: tuple[int, int, int], apply_head: bool):
        """(jitted function, abstract images) of a call on `num` images."""
        return self._fns[bool(apply_head)], common.row_structs(self.mesh, num, (image_shape, np.float32))


class SampleFn:
    """Samples: `(params, key, labels [B], sampler) -> images [B, H, W, C]` as numpy on every host.

    `conditional` and `num_classes` say which labels it takes (an unconditional decoder ignores them).
    One compiled function per sampler name ("euler", "rk45", ...).
    """

    def __init__(self, task, mesh):
        self.mesh, self._task = mesh, task
        self.conditional, self.num_classes = task.conditional, task.num_classes
        self._fns = {}

    def _fn(self, sampler: str):
        if sampler not in self._fns:
            def local(params, labels, keys, *, axis_name):
                del axis_name  # samples are independent rows
                return self._task.sample(params, jax.random.wrap_key_data(keys[0]), labels, sampler=sampler)

            self._fns[sampler] = common.sharded_fn(local, self.mesh, num_row_args=2)
        return self._fns[sampler]

    def __call__(self, params, key, labels, sampler: str = "euler") -> np.ndarray:
        labels = jnp.asarray(labels, jnp.int32)
        devices = self.mesh.shape[parallel.DATA]
        padded = jnp.concatenate([labels, jnp.zeros((-len(labels) % devices,), jnp.int32)])
        keys = jax.random.key_data(jax.random.split(key, devices))  # one key per device's rows
        keys = jnp.repeat(keys, len(padded) // devices, axis=0)
        rows = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(parallel.DATA))
        out = self._fn(sampler)(params, jax.device_put(padded, rows), jax.device_put(keys, rows))
        return common.fetch(out)[: len(labels)]

    def compile_target(self, num: int, sampler: str):
        """(jitted function, abstract row inputs) of a call with `num` labels."""
        key_shape = jax.random.key_data(jax.random.key(0)).shape
        return self._fn(sampler), common.row_structs(self.mesh, num, ((), jnp.int32), (key_shape, jnp.uint32))


class ClassifyFn:
    """Case study 3's classifier: `(params, images, labels, mask, prior) -> (predicted, predicted with class
    weights)`, all [B] global row-sharded arrays; `latent_dim` is the prior's width D ([B, D]).

    An image's latent depends on the whole batch (every image is an anchor of the mixture); rows with mask False
    get weight 0 in it. The class weights are the frequencies of the batch's (unmasked) labels.
    """

    def __init__(self, task, mesh):
        self.mesh, self._task = mesh, task
        self.latent_dim, self.num_classes = task.latent_dim, task.num_classes
        self._fn = common.sharded_fn(self.local, mesh, num_row_args=4)

    def local(self, params, images, labels, mask, prior, *, axis_name):
        """The per-device function (axis_name None: one device's batch alone)."""
        latents = self._task.image_latents(params, images, prior, axis_name=axis_name, mask=mask)
        weights = losses.class_weights(labels, self.num_classes, axis_name=axis_name, mask=mask)
        return self._task.classify_latents(params, latents), self._task.classify_latents(params, latents, weights)

    def __call__(self, params, images, labels, mask, prior):
        return self._fn(params, images, labels, mask, prior)

    def compile_target(self, num: int, image_shape: tuple[int, int, int]):
        return self._fn, common.image_rows(image_shape, self.mesh, num, self.latent_dim)


class ReconstructFn:
    """Inversion then regeneration: `(params, images, labels, mask, prior, sampler) -> images` ([B, ...] global
    row-sharded); the labels are used only by a task that classifies. `latent_dim`: the prior's width D."""

    def __init__(self, task, mesh):
        self.mesh, self._task = mesh, task
        self.latent_dim = task.latent_dim
        self._fns = {}

    def _fn(self, sampler: str):
        if sampler not in self._fns:
            task = self._task

            def local(params, x, labels, mask, prior, *, axis_name):
                latent = task.image_latents(params, x, prior, axis_name=axis_name, mask=mask)
                known = labels if protocol.can(task, protocol.CLASSIFIES) else None
                noise = task.invert(params, x, latent, known, sampler=sampler)
                return task.decode(params, noise, latent, known, sampler=sampler)

            self._fns[sampler] = common.sharded_fn(local, self.mesh, num_row_args=4)
        return self._fns[sampler]

    def __call__(self, params, images, labels, mask, prior, sampler: str = "euler"):
        return self._fn(sampler)(params, images, labels, mask, prior)

    def compile_target(self, num: int, image_shape: tuple[int, int, int], sampler: str):
        return self._fn(sampler), common.image_rows(image_shape, self.mesh, num, self.latent_dim)
