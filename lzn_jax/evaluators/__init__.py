"""Evaluators, looked up by string here and nowhere else.

`config.evals` maps a name to a spec: `{"kind": <registry key, default: the name>, "every_steps": N, **kwargs}`;
every_steps = -1 switches an evaluator off (e.g. FID until its Inception weights are given).
Every evaluator is built as `cls(task=..., config=..., workdir=..., mesh=..., writer=..., **kwargs)` and has
`name`, `every_steps` and `run(params, step) -> Iterator[(metric name, float)]`, names prefixed `eval/`.
"""

from __future__ import annotations

import difflib
import importlib

_REGISTRY = {
    "class_accuracy": ("lzn_jax.evaluators.classification", "ClassAccuracy"),
    "samples": ("lzn_jax.evaluators.generation", "Samples"),
    "reconstruction": ("lzn_jax.evaluators.generation", "Reconstruction"),
    "sample_accuracy": ("lzn_jax.evaluators.generation", "SampleClassifierAccuracy"),
    "fid": ("lzn_jax.evaluators.generation", "FID"),
    "linear_probe": ("lzn_jax.evaluators.representation", "LinearProbe"),
    "export": ("lzn_jax.evaluators.representation", "ExportEmbeddings"),
}


def kinds() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, spec, *, task, config, workdir, mesh, writer):
    kwargs = dict(spec)
    kind = kwargs.pop("kind", name)
    if kind not in _REGISTRY:
        hint = difflib.get_close_matches(kind, _REGISTRY, n=1)
        raise ValueError(
            f"config.evals.{name}: unknown evaluator {kind!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid kinds: {kinds()}."
        )
    module_path, class_name = _REGISTRY[kind]
    cls = getattr(importlib.import_module(module_path), class_name)
    every_steps = kwargs.pop("every_steps", config.eval_every_steps)
    evaluator = cls(task=task, config=config, workdir=workdir, mesh=mesh, writer=writer, **kwargs)
    evaluator.name, evaluator.every_steps = name, every_steps
    return evaluator
