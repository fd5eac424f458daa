"""Evaluators, looked up by string here and nowhere else.

`config.evals` maps a name to a spec: `{"kind": <registry key, default: the name>, "every_steps": N, **kwargs}`;
every_steps = -1 switches an evaluator off (e.g. FID until its Inception weights are given).
Every evaluator is built as `cls(task=..., config=..., workdir=..., mesh=..., writer=..., **kwargs)` and has
`name`, `every_steps` and `run(params, step) -> Iterator[(metric name, float)]`, names prefixed `eval/`.
The keys a spec may set are read from the class's signature (`spec_keys`), so `configlib.check` validates
them with no second list to keep in step.
"""

from __future__ import annotations

import difflib
import importlib
import inspect

_REGISTRY = {
    "class_accuracy": ("lzn_jax.evaluators.classification", "ClassAccuracy"),
    "samples": ("lzn_jax.evaluators.generation", "Samples"),
    "reconstruction": ("lzn_jax.evaluators.generation", "Reconstruction"),
    "sample_accuracy": ("lzn_jax.evaluators.generation", "SampleClassifierAccuracy"),
    "fid": ("lzn_jax.evaluators.generation", "FID"),
    "linear_probe": ("lzn_jax.evaluators.representation", "LinearProbe"),
    "export": ("lzn_jax.evaluators.representation", "ExportEmbeddings"),
}
# Keyword arguments naming a local file the evaluator reads (checked to exist before a run starts).
FILE_ARGUMENTS = {"fid": ("inception_weights",)}
BUILD_ARGUMENTS = ("task", "config", "workdir", "mesh", "writer")  # what `build` passes every evaluator itself
SCHEDULE_KEYS = ("kind", "every_steps")  # spec keys `build` reads itself


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def kind_of(name: str, spec) -> str:
    """The registry key of `config.evals.<name>`; ValueError naming the nearest kind when there is none."""
    kind = spec.get("kind", name)
    if kind not in _REGISTRY:
        hint = difflib.get_close_matches(str(kind), _REGISTRY, n=1)
        raise ValueError(
            f"config.evals.{name}: unknown evaluator {kind!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid kinds: {kinds()}" + ("" if "kind" in spec else f" (set config.evals.{name}.kind to one)") + "."
        )
    return kind


def _class(kind: str):
    module_path, class_name = _REGISTRY[kind]
    return getattr(importlib.import_module(module_path), class_name)


def spec_keys(kind: str) -> dict:
    """{key: default} of the keyword arguments a spec of `kind` may set besides SCHEDULE_KEYS.

    Read from the evaluator's signature, less the arguments `build` passes; inspect.Parameter.empty marks a
    required one; an evaluator that takes **kwargs accepts any key, marked by the key `"**"`.
    """
    keys = {}
    for parameter in inspect.signature(_class(kind)).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            keys["**"] = inspect.Parameter.empty
        elif parameter.name not in BUILD_ARGUMENTS and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            keys[parameter.name] = parameter.default
    return keys


def build(name: str, spec, *, task, config, workdir, mesh, writer):
    kwargs = dict(spec)
    kind = kind_of(name, kwargs)
    kwargs.pop("kind", None)
    every_steps = kwargs.pop("every_steps", config.eval_every_steps)
    evaluator = _class(kind)(task=task, config=config, workdir=workdir, mesh=mesh, writer=writer, **kwargs)
    evaluator.name, evaluator.every_steps = name, every_steps
    return evaluator
