"""Small pieces shared by the task compositions."""

from __future__ import annotations

import dataclasses
import inspect

import flax.linen as nn
import jax
import ml_collections
import jax.numpy as jnp

from lzn_jax import models


def complete_section(section, where: str, **composition) -> ml_collections.ConfigDict:
    """A model section with the fields its composition determines (e.g. a decoder's latent_dim is the config's
    latent_dim when there is an image encoder, else 0): filled in when the section omits them, checked when it
    sets them."""
    fields = dict(section)
    for key, value in composition.items():
        if key in fields and fields[key] != value:
            raise ValueError(
                f"config.{where}.{key}={fields[key]!r} does not fit the composition, which needs {value!r}: "
                f"remove the field (it is derived) or set it to {value!r}."
            )
        fields[key] = value
    return ml_collections.ConfigDict(fields)


def build_module(section, config) -> nn.Module:
    """The module of a complete model section, with the config's compute `dtype` and matmul `precision` unless
    the section sets its own (precision only for networks; label anchors compute no products)."""
    fields = dict(section)
    fields.setdefault("dtype", config.dtype)
    if "precision" in {f.name for f in dataclasses.fields(models.model_class(fields["name"]))}:
        fields.setdefault("precision", config.precision)
    return models.build(fields)


def at_least_float32(x: jax.Array) -> jax.Array:
    """x in float32, or in its own dtype when wider (float64 under jax_enable_x64): the zoning and the losses
    run in at least float32 whatever the networks compute in."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


REPLAY_KEY = "noise"


def draws(batch: dict, draw) -> dict:
    """The random draws of a step: `draw()`, or the recorded ones a batch carries under `batch["noise"]`.

    The replay hook of the tasks' `noise(rng, batch)`: a batch with a "noise" entry ({name: [B, ...]}, the same
    names and shapes `draw()` gives) makes the step use those draws instead of its own, cast to the dtypes
    `draw()` would give. tests/test_reference_steps.py replays the official trainers' recorded draws this way;
    the data pipelines never produce the key.
    """
    if REPLAY_KEY not in batch:
        return draw()
    expected, recorded = jax.eval_shape(draw), batch[REPLAY_KEY]
    if set(recorded) != set(expected):
        raise ValueError(f"batch['noise'] holds {sorted(recorded)}; this task draws {sorted(expected)}.")
    for name, spec in expected.items():
        if recorded[name].shape != spec.shape:
            raise ValueError(f"batch['noise'][{name!r}] has shape {recorded[name].shape}; the task draws {spec.shape}.")
    return {name: jnp.asarray(recorded[name], spec.dtype) for name, spec in expected.items()}


def require(config, *sections: str, task: str) -> None:
    for section in sections:
        if not config[section].get("name"):
            raise ValueError(
                f"task={task!r} needs config.{section}.name (one of {models.names()}); it is empty."
            )


def apply_encoder(encoder: nn.Module, params, images, *, apply_head: bool = True, train=False, rng=None):
    """The image encoder: images [B, H, W, C] -> anchors [B, Dz] (apply_head=False: a ResNet's pre-head features).

    ValueError for apply_head=False when the encoder has no separate head (NCSN++: its anchor heads are the net).
    """
    if not apply_head and "apply_head" not in inspect.signature(type(encoder).__call__).parameters:
        raise ValueError(
            f"apply_head=False: this model's image encoder ({type(encoder).__name__}) has no separate "
            "head (its anchor heads are part of the network); its only output is the anchor, apply_head=True."
        )
    kwargs = {} if apply_head else {"apply_head": False}
    rngs = {"dropout": rng} if train else {}
    return encoder.apply({"params": params["encoder"]}, images, train=train, rngs=rngs, **kwargs)


def init_variables(module: nn.Module, rng: jax.Array, *args, **kwargs):
    """`module.init` with params and dropout streams; returns the params collection."""
    params_rng, dropout_rng = jax.random.split(rng)
    return module.init({"params": params_rng, "dropout": dropout_rng}, *args, train=False, **kwargs)["params"]


def one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
