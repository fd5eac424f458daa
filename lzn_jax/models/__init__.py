"""Model registry: the one place where a config's `name` becomes a Flax module.

Every model is a Flax module that also owns `check_image_size(image_size, where)` (a ValueError naming the
config section `where` when the network cannot take `image_size` x `image_size` images; called by
`tasks.check_config` before any compute), `example_inputs(image_size, num_channels)` (positional `init` arguments
of batch size 1: how `convert` and the benchmarks trace its parameter shapes) and a class attribute `TINY` (the
fields of its `:runlocal` preset, applied by `configs/common.runlocal`). So a new model touches its own file and
`_REGISTRY` below, nothing else. Every model config is a flat ConfigDict
`{name: <registry key>, **module fields}`; `build` passes the fields to the module's constructor unchanged, so
a config reads like the module's signature. Modules are imported lazily (no import-side-effect registration).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# registry key -> (module path, class name)
_REGISTRY = {
    "ncsnpp_encoder": ("lzn_jax.models.ncsnpp", "NCSNPPEncoder"),
    "ncsnpp_decoder": ("lzn_jax.models.ncsnpp", "NCSNPPDecoder"),
    "resnet": ("lzn_jax.models.resnet", "ResNetEncoder"),
    "label_anchors": ("lzn_jax.models.label_anchors", "LabelAnchors"),
}

_DTYPE_FIELDS = ("dtype", "param_dtype")


def names() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, _REGISTRY, n=1)
        raise ValueError(
            f"Unknown model name {name!r}. Valid names: {names()}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    module_path, class_name = _REGISTRY[name]
    return getattr(importlib.import_module(module_path), class_name)


def _precision(name: str) -> jax.lax.Precision:
    try:
        return jax.lax.Precision(name)
    except ValueError:
        raise ValueError(
            f"precision={name!r} is not a matmul precision; use 'highest' (float32 products, the official run), "
            "'high' or 'default' (TPU: bfloat16 passes)."
        ) from None


def build(cfg: Mapping[str, Any]) -> nn.Module:
    """Builds the Flax module named by `cfg['name']` from the remaining fields of `cfg`."""
    fields = dict(cfg)
    if "name" not in fields:
        raise ValueError(f"A model config needs a 'name' field (one of {names()}); got keys {sorted(fields)}.")
    cls = model_class(fields.pop("name"))
    valid = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
    unknown = sorted(set(fields) - valid)
    if unknown:
        hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        detail = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ValueError(f"{cls.__name__} has no field(s) {detail}. Valid fields: {sorted(valid)}.")
    hints = typing.get_type_hints(cls)
    for key, value in fields.items():
        if key in hints and not _matches(value, hints[key]):
            raise ValueError(f"{cls.__name__}.{key}={value!r} is not a {_describe(hints[key])}.")
    for key in _DTYPE_FIELDS:
        if isinstance(fields.get(key), str):
            fields[key] = jnp.dtype(fields[key])
    if isinstance(fields.get("precision"), str):
        fields["precision"] = _precision(fields["precision"])
    for key, value in fields.items():
        if isinstance(value, list):  # ConfigDict round-trips tuples as lists; modules want hashables.
            fields[key] = tuple(value)
    return cls(**fields)


def _matches(value, hint) -> bool:
    """Whether a config value fits a module field's annotation (int, float, bool, str, tuples of them, X | None).

    A value of the wrong kind once reached the network: `--config.encoder.ch_mult=abc` parses as a tuple of
    strings, and init failed with "Shapes must be 1D sequences of concrete values of integer type".
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(args) == len(value) and all(_matches(item, arg) for item, arg in zip(value, args))
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint in (int, float):  # ints where floats go; never a bool for a number
        kinds = (int, np.integer) if hint is int else (int, float, np.integer, np.floating)
        return isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))
    if hint is str:
        return isinstance(value, str)
    return True  # Any (dtypes, precision) and other annotations are not checked here


def _describe(hint) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")
