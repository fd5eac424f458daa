"""Public inference API: the paper's tasks as compositions of encoders and decoders, pure functions of params.

    lzn, params = api.load("workdirs/digits_joint")          # trained (or converted) checkpoint + its config
    feats  = lzn.embed(params, images)                        # image encoder
    labels = lzn.classify(params, images, key=key)            # image encoder → label decoder
    images = lzn.generate(params, key, labels=jnp.arange(10)) # label encoder → image decoder
    recon  = lzn.reconstruct(params, images, key=key)         # image → latent → noise (inverse ODE) → image
    path   = lzn.interpolate(params, image_a, image_b, steps=8, key=key)

Every method is a pure function of (params, inputs, key): jit it, vmap it, grad it, compose it (`steps` and
`num` set output shapes and `apply_head` chooses code: mark them static,
`jax.jit(lzn.interpolate, static_argnames="steps")`; traced, each is refused with that advice). A sample's latent
depends on the batch it is encoded with (all images of the batch are the anchors of one mixture); the methods
that compute latents take `context` images that join the mixture, so this dependence is explicit.

An eager call runs each network and flow of the composition as one compiled program (the task's functions,
jitted once per `LZN` and input shape): op by op, every call retraced the ODE loops (digits_joint:runlocal's
`reconstruct` of 8 images took 5.2 s per call, 0.29 s jitted: experiments/bench_api_eager.py,
docs/results/api_eager.json). Under jit, vmap or grad they are inlined into the caller's program.

Input checks: ranks, shapes and dtypes are checked on every call (traced or not) before anything runs, with
errors that say what was expected. Values are checked when they are concrete (eager calls): images must be
finite and in [-1, 1] (up to ±IMAGE_LIMIT, for decoder outputs that overshoot a little), labels in
[0, num_classes), prior_std and class weights finite and non-negative. Under jit values are not checked (that
would need a host sync); instead a bad label makes its generated image NaN and a latent that is not finite
(from NaN images, say) is classified as -1, never as a plausible class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from lzn_jax import checkpoint, config_files, configlib, data, tasks, zoning

# The task functions' keyword arguments that set output shapes or choose code: static when the API jits them.
STATIC_ARGNAMES = {"embed": ("apply_head",), "sample": ("num", "sampler"), "invert": ("sampler",),
                   "decode": ("sampler",)}
IMAGE_LIMIT = 1.5  # eager calls refuse images beyond this: [0, 255] data, or values that are not images


@dataclasses.dataclass(frozen=True)
class LZN:
    """The compositions of one config's modules. Holds no parameters."""

    task: object
    config: ml_collections.ConfigDict = dataclasses.field(compare=False, hash=False)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "LZN":
        configlib.check(config, evals=False)  # inference: the training run's evaluator settings do not matter
        return cls(task=tasks.build(config), config=config)

    # ------------------------------------------------------------------ input checks

    @property
    def image_shape(self) -> tuple[int, int, int]:
        d = self.config.data
        return (d.image_size, d.image_size, d.num_channels)

    def _images(self, images, name="images") -> jax.Array:
        shape = getattr(images, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(f"`{name}` must be a batch [B, H, W, C] = [B, *{self.image_shape}]; got shape {shape}.")
        if tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"`{name}` has images of shape {tuple(shape[1:])}, but this model takes {self.image_shape} (H, W, C; "
                "NHWC, values in [-1, 1]). Resize or convert the channels first."
            )
        if shape[0] == 0:
            raise ValueError(f"`{name}` is empty.")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be floating point in [-1, 1]; got {images.dtype}. Use x / 127.5 - 1 for uint8.")
        if zoning.concrete(images):
            values = np.asarray(images, np.float32)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"`{name}` contains NaN or inf values; images must be finite, in [-1, 1].")
            low, high = float(values.min()), float(values.max())
            if low < -IMAGE_LIMIT or high > IMAGE_LIMIT:
                raise ValueError(
                    f"`{name}` has values in [{low:g}, {high:g}], but the model takes images in [-1, 1]. "
                    "Use x / 127.5 - 1 for [0, 255] data."
                )
        return _on_auto_axes(jnp.asarray(images, jnp.float32))

    def _labels(self, labels) -> jax.Array:
        if getattr(labels, "ndim", None) != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"`labels` must be an int array [B]; got {getattr(labels, 'dtype', type(labels))} "
                             f"{getattr(labels, 'shape', None)}.")  # fmt: skip
        if labels.shape[0] == 0:
            raise ValueError("`labels` is empty: pass at least one label.")
        num_classes = self.task.num_classes
        if zoning.concrete(labels) and not np.all((np.asarray(labels) >= 0) & (np.asarray(labels) < num_classes)):
            raise ValueError(f"`labels` must be in [0, {num_classes}); got values in "
                             f"[{np.min(labels)}, {np.max(labels)}].")  # fmt: skip
        return jnp.asarray(labels, jnp.int32)

    def _prior_std(self, prior_std):
        if jnp.ndim(prior_std) != 0:
            raise ValueError(f"`prior_std` must be a scalar; got shape {jnp.shape(prior_std)}.")
        if zoning.concrete(prior_std) and not (np.isfinite(prior_std) and prior_std >= 0):
            raise ValueError(f"`prior_std` must be a finite number >= 0 (0: deterministic latents); got {prior_std}.")
        return prior_std

    def _class_weights(self, class_weights):
        if class_weights is None:
            return None
        num_classes = self.task.num_classes
        if getattr(class_weights, "shape", None) != (num_classes,):
            raise ValueError(f"`class_weights` must have shape [{num_classes}] (one weight per class); got "
                             f"{getattr(class_weights, 'shape', type(class_weights).__name__)}.")  # fmt: skip
        if zoning.concrete(class_weights):
            values = np.asarray(class_weights, np.float64)
            if not (np.all(np.isfinite(values) & (values >= 0)) and np.any(values > 0)):
                raise ValueError(f"`class_weights` must be finite, >= 0 and not all 0; got {values.tolist()}.")
        return class_weights

    def _single_image(self, x, name) -> jax.Array:
        """An image [H, W, C] or [1, H, W, C] -> [1, H, W, C], checked as `name`."""
        shape = tuple(getattr(x, "shape", ()))
        if shape not in (self.image_shape, (1,) + self.image_shape):
            raise ValueError(f"`{name}` must be one image {self.image_shape} (or [1, *{self.image_shape}]); got "
                             f"shape {shape if hasattr(x, 'shape') else type(x).__name__}.")  # fmt: skip
        return self._images(jnp.reshape(x, (1,) + self.image_shape), name)

    @staticmethod
    def _static(method: str, **arguments) -> None:
        """TypeError naming the fix when an argument that sets a shape or chooses code is traced (passed through
        jax.jit without being marked static): JAX's own error (a TracerBoolConversionError deep in the task, for
        `apply_head` and `num`) names neither the argument nor the cure. (A string `sampler` cannot be traced: jit
        refuses it as an argument.)"""
        for name, value in arguments.items():
            if isinstance(value, jax.core.Tracer):
                raise TypeError(f"`{name}` of LZN.{method} sets an output shape or chooses code, so it must be a Python "
                                f"value, not traced: under jit mark it static, jax.jit(lzn.{method}, "
                                f'static_argnames="{name}").')  # fmt: skip

    def _need(self, what: str, *capabilities: str) -> None:
        """ValueError saying what this model cannot do unless its task has `capabilities` (lzn_jax.tasks.protocol)."""
        tasks.require(self.task, *capabilities, message=f"This model (task={self.config.task!r}, "
                      f"conditional={self.config.conditional}) cannot {what}.")  # fmt: skip

    def _compiled(self, name: str):
        """The task's function `name`, jitted once per LZN (its keyword arguments in STATIC_ARGNAMES static)."""
        jitted = self.__dict__.setdefault("_jitted", {})  # a cache beside the fields: the dataclass stays frozen
        if name not in jitted:
            jitted[name] = jax.jit(getattr(self.task, name), static_argnames=STATIC_ARGNAMES.get(name, ()))
        return jitted[name]

    # ------------------------------------------------------------------ compositions

    def embed(self, params, images, *, apply_head: bool = True) -> jax.Array:
        """Image encoder: images [B, H, W, C] -> anchors [B, Dz] (apply_head=False: pre-head features)."""
        self._static("embed", apply_head=apply_head)
        images = self._images(images)
        self._need("embed images (it has no image encoder)", tasks.EMBEDS)
        # apply_head=False with an encoder that has no separate head: ValueError from the task, before compute.
        return self._compiled("embed")(params, images, apply_head=apply_head)

    def latents(self, params, images, *, key, context=None, prior_std: float = 1.0) -> jax.Array:
        """Image encoder + forward flow: latents [B, Dz] of `images`, zoned together with `context` images."""
        self._need("compute latents (it has no image encoder with a latent flow)", tasks.ZONES)
        images = self._images(images)
        prior_std = self._prior_std(prior_std)
        batch = images if context is None else jnp.concatenate([images, self._images(context, "context")])
        prior = prior_std * jax.random.normal(key, (batch.shape[0], self.task.latent_dim))
        return self._compiled("image_latents")(params, batch, prior)[: images.shape[0]]

    def classify(self, params, images, *, key, context=None, class_weights=None, prior_std: float = 1.0) -> jax.Array:
        """Image encoder → reverse flow over label anchors → nearest label anchor: labels [B].

        class_weights: optional [K] class frequencies multiplying the label zones (official "with class weights").
        prior_std: scale of the noise the image's forward flow starts from; 0 gives deterministic latents (the
        official tunable-std evaluation, usually the most accurate), 1 the official ClassAccuracy.
        Returns labels in [0, num_classes), or -1 where the latent is not finite (unchecked input under jit).
        """
        self._need("classify (it has no label anchors)", tasks.CLASSIFIES, tasks.ZONES)
        class_weights = self._class_weights(class_weights)
        lat = self.latents(params, images, key=key, context=context, prior_std=prior_std)
        labels = self._compiled("classify_latents")(params, lat, class_weights)
        # A non-finite latent (possible only under jit, from unchecked inputs) has no class: -1, not argmin's 0.
        return jnp.where(jnp.all(jnp.isfinite(lat), axis=-1), labels, -1)

    def generate(self, params, key, labels=None, *, num: Optional[int] = None, sampler: str = "euler") -> jax.Array:
        """Label encoder → image decoder: images [B, H, W, C] in about [-1, 1]. sampler: "euler" or "rk45".

        labels: [B] ints in [0, num_classes) for a label-conditional model (under jit, unchecked: an image whose
        label is out of range comes back NaN); num: a positive int for an unconditional one.
        """
        self._static("generate", num=num)
        self._need("generate images (it has no decoder)", tasks.GENERATES)
        if self.task.conditional:
            if labels is None:
                raise ValueError("This model is label-conditional: pass labels [B] (ints in [0, num_classes)).")
            labels = self._labels(labels)
            if num is not None and num != labels.shape[0]:
                raise ValueError(f"`num`={num!r} but {labels.shape[0]} labels: a conditional model makes one image "
                                 "per label (leave `num` out).")  # fmt: skip
            images = self._compiled("sample")(params, key, labels, num=num, sampler=sampler)
            # Traced labels are not range-checked: one outside [0, num_classes) gives a NaN image, not a clamped class.
            valid = (labels >= 0) & (labels < self.task.num_classes)
            return jnp.where(valid[:, None, None, None], images, jnp.nan)
        if labels is not None:
            raise ValueError("This model is not label-conditional: pass `num` (how many images), not `labels`.")
        if num is None:
            raise ValueError("Pass `num` (how many images) for an unconditional model.")
        if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
            raise ValueError(f"`num` must be a positive int (how many images); got {num!r}.")
        return self._compiled("sample")(params, key, labels, num=num, sampler=sampler)

    def reconstruct(self, params, images, *, key, labels=None, context=None, sampler: str = "euler") -> jax.Array:
        """Image → latent → initial noise (decoder ODE backwards) → image again: [B, H, W, C].

        labels: for a label-conditional model, the labels [B] the decoder is given (checked as `generate`'s; under
        jit an out-of-range one gives a NaN image); None: the labels `classify` reads from the latents.
        """
        self._need("reconstruct (it needs an image encoder and a decoder)", tasks.ZONES, tasks.GENERATES, tasks.INVERTS)
        images = self._images(images)
        if labels is not None:
            if not self.task.conditional:
                raise ValueError("This model is not label-conditional: reconstruct takes no `labels`.")
            labels = self._labels(labels)
            if labels.shape[0] != images.shape[0]:
                raise ValueError(f"`labels` has {labels.shape[0]} labels for {images.shape[0]} images.")
        lat = self.latents(params, images, key=key, context=context)
        if tasks.can(self.task, tasks.CLASSIFIES) and labels is None:
            labels = self._compiled("classify_latents")(params, lat)
        noise = self._compiled("invert")(params, images, lat, labels, sampler=sampler)
        out = self._compiled("decode")(params, noise, lat, labels, sampler=sampler)
        if labels is None:
            return out
        valid = (labels >= 0) & (labels < self.task.num_classes)  # traced labels are not range-checked
        return jnp.where(valid[:, None, None, None], out, jnp.nan)

    def interpolate(self, params, a, b, steps: int, *, key, context=None, sampler: str = "euler") -> jax.Array:
        """Images along the spherical path between the latents of image a and image b: [steps, H, W, C].

        a, b: single images [H, W, C] (or [1, H, W, C]). steps: a Python int >= 2 (static under jit). Every point is decoded from the same initial noise, so
        the images change only with the latent (and, for a conditional model, the label read from it).
        context: other images [N, H, W, C] zoned with a and b. Pass a batch like the training batches: alone, the
        two images split the latent space in halves, and their latents say little about them.
        """
        self._static("interpolate", steps=steps)
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 2:
            raise ValueError(f"`steps` must be an int, at least 2 (the two ends); got {steps!r}.")
        self._need("interpolate (it needs an image encoder and a decoder)", tasks.ZONES, tasks.GENERATES)
        pair = jnp.concatenate([self._single_image(a, "a"), self._single_image(b, "b")])
        k_latent, k_noise = jax.random.split(key)
        lat_a, lat_b = self.latents(params, pair, key=k_latent, context=context)
        path = slerp(lat_a, lat_b, jnp.linspace(0.0, 1.0, steps))
        labels = self._compiled("classify_latents")(params, path) if tasks.can(self.task, tasks.CLASSIFIES) else None
        noise = jnp.broadcast_to(jax.random.normal(k_noise, self.image_shape), (steps,) + self.image_shape)
        return self._compiled("decode")(params, noise, path, labels, sampler=sampler)


def slerp(a: jax.Array, b: jax.Array, fractions: jax.Array) -> jax.Array:
    """Spherical interpolation between two latents [D] at fractions [S] -> [S, D] (keeps Gaussian norms)."""
    cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    so = jnp.sin(omega)
    f = fractions[:, None]
    linear = (1 - f) * a + f * b
    spherical = (jnp.sin((1 - f) * omega) * a + jnp.sin(f * omega) * b) / jnp.where(so > 1e-6, so, 1.0)
    return jnp.where(so > 1e-6, spherical, linear)


def load(workdir: str, *, use_ema: bool = True, config: ml_collections.ConfigDict | str | None = None, mesh=None):
    """(LZN, params) from a workdir written by lzn_jax.main (its config.json and newest checkpoint).

    Also loads a directory written by `python -m lzn_jax.convert` when `config` (the config it was converted
    for, as a ConfigDict or as the `--config` value given to convert, e.g. "configs/joint_cifar10.py") is given.
    use_ema: the EMA params (what the paper evaluates) or the raw ones.

    The params are plain arrays that work in every transform, eager or jitted, whatever mesh trained them:
    on the default device, or with `mesh` (e.g. `jax.make_mesh((8,), ("data",))`) replicated over its devices,
    so that images sharded over that mesh are encoded where they lie. The mesh's axes are used as
    `AxisType.Auto` (sharding propagated by the compiler), so no `jax.set_mesh` is needed around the calls.
    """
    workdir = os.fspath(workdir)
    if not epath.Path(workdir).is_dir():  # local or gs:// (Orbax's own path library)
        raise FileNotFoundError(f"The directory {workdir!r} does not exist: pass the --workdir of a training run "
                                "(or the --out of lzn_jax.convert, with its config).")  # fmt: skip
    if isinstance(config, (str, os.PathLike)):  # once an AttributeError deep inside LZN.from_config
        config = config_files.load(os.fspath(config))
    if config is None:
        path = epath.Path(workdir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{workdir!r} has no config.json (it is not a --workdir of lzn_jax.main): pass "
                                    "the config the checkpoint was made with, api.load(directory, config=...).")  # fmt: skip
        config = configlib.from_json(path.read_text())
    lzn = LZN.from_config(config)
    abstract = jax.eval_shape(lzn.task.init, jax.random.key(0), data.batch_spec(config.data, 2))
    sharding = _params_sharding(mesh)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    with _quiet_orbax():  # a workdir's checkpoints/ or, from lzn_jax.convert, the directory itself
        items = checkpoint.restore_params(workdir, {"params": target, "ema_params": target})
    return lzn, items["ema_params" if use_ema else "params"]


@contextlib.contextmanager
def _quiet_orbax():
    """A read-only CheckpointManager warns three times that it is read-only (via absl): not news to a reader."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _params_sharding(mesh) -> jax.sharding.Sharding:
    """Where loaded params live: the default device, or replicated over `mesh` with Auto (not Explicit) axes.

    Explicit axes (the train mesh) would put an AbstractMesh into every eager vmap/grad over the params, which
    then fails with "Passing lowering_platforms ... is required when only AbstractMesh exists".
    """
    if mesh is None:  # this process's first device: jax.devices()[0] belongs to process 0 alone
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.sharding.NamedSharding(_auto_mesh(mesh), jax.sharding.PartitionSpec())


def _auto_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """`mesh` with every axis `AxisType.Auto`."""
    auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
    return jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def _on_auto_axes(x: jax.Array) -> jax.Array:
    """An array laid out over a mesh with Explicit axes (what `jax.make_mesh` makes by default) -> the same layout
    over the same devices with Auto axes, as `load(mesh=...)` places the params: JAX refuses to mix the two
    meshes in one call ("Mesh for all inputs should be equal"). Traced values pass unchanged."""
    sharding = getattr(x, "sharding", None)
    if not zoning.concrete(x) or not isinstance(sharding, jax.sharding.NamedSharding):
        return x
    if all(t == jax.sharding.AxisType.Auto for t in sharding.mesh.axis_types):
        return x
    return jax.device_put(x, jax.sharding.NamedSharding(_auto_mesh(sharding.mesh), sharding.spec))
