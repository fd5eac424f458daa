"""Evaluators, looked up by string here and nowhere else.

`config.evals` maps a name to a spec: `{"kind": <registry key, default: the name>, "every_steps": N, **kwargs}`;
every_steps = -1 switches an evaluator off (e.g. FID until its Inception weights are given); absent or None, it is
`config.eval_every_steps` (`every_steps`).

Evaluators are built from the functions they need, as big_vision's `Evaluator(predict_fn, **cfg)`: an
evaluator's constructor names, among its keyword arguments, the prediction functions it calls (`embed_fn`,
`sample_fn`, `conditional_sample_fn`, `classify_fn`, `reconstruct_fn`: `predict.NEEDS`) and the run's context it reads (`CONTEXT`:
`data_cfg`, `mesh`, `workdir`, `writer`, `eval_batch_size`); `build` passes exactly those, the functions made
by `predict.make` from the run's task and mesh, and the spec's settings as the other keyword arguments. No
evaluator sees the task or the config. Every evaluator has `name`, `every_steps` and
`run(params, step) -> Iterator[(metric name, float)]`, names prefixed `eval/`; most also
`host_memory_bytes()` and `compile_targets()` (the scale rehearsal compiles those). The keys a spec may set
are read from the class's signature (`spec_keys`), so `configlib.check` validates them with no second list to
keep in step.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing

_REGISTRY = {
    "class_accuracy": ("lzn_jax.evaluators.classification", "ClassAccuracy"),
    "samples": ("lzn_jax.evaluators.generation", "Samples"),
    "reconstruction": ("lzn_jax.evaluators.generation", "Reconstruction"),
    "sample_accuracy": ("lzn_jax.evaluators.generation", "SampleClassifierAccuracy"),
    "fid": ("lzn_jax.evaluators.fid", "FID"),
    "linear_probe": ("lzn_jax.evaluators.linear_probe", "LinearProbe"),
    "export": ("lzn_jax.evaluators.export", "ExportEmbeddings"),
}
# Keyword arguments naming a local file the evaluator reads (checked to exist before a run starts).
FILE_ARGUMENTS = {"fid": ("inception_weights",)}
CONTEXT = ("data_cfg", "mesh", "workdir", "writer", "eval_batch_size")  # the run's context an evaluator may name
SCHEDULE_KEYS = ("kind", "every_steps")  # spec keys `build` reads itself


def every_steps(spec, default: int) -> int:
    """The schedule of one `config.evals` entry: its `every_steps`, or `default` (config.eval_every_steps) where
    it is absent or None (a shipped config declares it as None: `--config.eval_every_steps=N` moves every entry
    that does not set its own; once each entry set its own, and that flag changed nothing)."""
    value = spec.get("every_steps")
    return default if value is None else value


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
    from lzn_jax.evaluators import predict

    passed_by_build = CONTEXT + tuple(predict.NEEDS)
    keys = {}
    for parameter in inspect.signature(_class(kind)).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            keys["**"] = inspect.Parameter.empty
        elif parameter.name not in passed_by_build and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            keys[parameter.name] = parameter.default
    return keys


def spec_hints(kind: str) -> dict:
    """{key: type hint} of the spec keys whose argument is annotated (every one whose default is None is: a config
    declares such a key as a typed placeholder, `configs.common.declare_evaluator_settings`)."""
    hints = typing.get_type_hints(_class(kind).__init__)
    return {key: hints[key] for key in spec_keys(kind) if key in hints}


def needs_labels(kind: str) -> bool:
    """Whether the evaluator `kind` scores against the dataset's labels (its class sets NEEDS_LABELS): with
    `num_classes=1` every label is 0 and its accuracy is 1.0 whatever the model."""
    return bool(getattr(_class(kind), "NEEDS_LABELS", False))


def needs(kind: str) -> list[str]:
    """The prediction functions (`predict.NEEDS` keys) the evaluator `kind` is built from, by its signature."""
    from lzn_jax.evaluators import predict

    return [parameter for parameter in inspect.signature(_class(kind)).parameters if parameter in predict.NEEDS]


def build(name: str, spec, *, task, config, workdir, mesh, writer):
    """The evaluator `config.evals.<name>` (= spec) of a run of `task` on `mesh`: its class (by `kind`) called with
    the prediction functions and context its signature names, and the spec's settings."""
    from lzn_jax.evaluators import predict

    kwargs = dict(spec)
    kind = kind_of(name, kwargs)
    kwargs.pop("kind", None)
    every = every_steps(kwargs, config.eval_every_steps)
    kwargs.pop("every_steps", None)
    cls = _class(kind)
    context = dict(data_cfg=config.data, mesh=mesh, workdir=workdir, writer=writer,
                   eval_batch_size=config.eval_batch_size)  # fmt: skip
    for parameter in inspect.signature(cls).parameters:
        if parameter in predict.NEEDS:
            kwargs[parameter] = predict.make(parameter, task, mesh, who=f"config.evals.{name} ({kind!r})")
        elif parameter in CONTEXT:
            kwargs[parameter] = context[parameter]
    evaluator = cls(**kwargs)
    evaluator.name, evaluator.every_steps = name, every
    return evaluator
