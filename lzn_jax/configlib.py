"""The base config: every key lzn_jax reads, with its default. Config files start from `base_config()`.

A config file is a plain `get_config()` returning a ConfigDict; `python -m lzn_jax.main --config=FILE` locks it,
so a misspelled override fails instead of being silently ignored (`check` adds the nearest valid key).
Model sections are flat `{name: <registry key>, **module fields}` dicts (see `lzn_jax.models.build`); an empty
`name` means the composition has no such module.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import typing
from typing import Any, Iterable

import ml_collections

from lzn_jax import data as data_lib

MODULES = ("encoder", "decoder", "label_anchors")  # the parameter groups; each gets its own lr, EMA, schedule


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "generation"  # which composition of encoders/decoders is trained (lzn_jax.tasks)
    c.seed = 0
    c.batch_size = 128  # global, over all devices and hosts
    c.num_train_steps = 1000
    c.log_every_steps = 50
    c.eval_every_steps = 1000  # default schedule of the evaluators in `evals`
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.max_consecutive_skips = 50  # this many non-finite steps in a row stop the run
    c.latent_dim = 200
    c.num_classes = 10  # classes the labels take (1: unlabeled / unconditional); data.num_classes is this field
    c.conditional = False  # generation: label anchors + one-hot label into the decoder

    c.data = data_lib.default_config()
    link_num_classes(c)

    # Model sections: `name` is a key of lzn_jax.models; the other fields go to the module unchanged.
    c.encoder = ml_collections.ConfigDict({"name": ""})
    c.decoder = ml_collections.ConfigDict({"name": ""})
    c.label_anchors = ml_collections.ConfigDict({"name": ""})

    c.zoning = ml_collections.ConfigDict()
    c.zoning.solver = "dpm_solver++"  # image encoder → latent (case studies 1, 3); case study 2 uses "euler"
    c.zoning.num_steps = 20
    c.zoning.prior_scale = 1.0  # case study 2: 0.45
    c.zoning.label_solver = "euler"
    c.zoning.label_num_steps = 100
    c.zoning.cutoff = 0.2  # fraction of early reverse-flow steps the losses ignore
    c.zoning.block_size = 0  # query rows per kernel tile ([rows, N] logits); 0 = auto: 2**24 / N

    c.loss = ml_collections.ConfigDict()
    c.loss.recon = 1.0  # rectified-flow L2 weight (official recon_loss_coe)
    c.loss.label = 1.0  # case study 3 label loss weight
    c.loss.prob = 0.0  # case study 2: weight of −mean max P
    c.loss.cross_entropy = 1.0  # case study 2: weight of −mean log max P
    c.loss.temperature = 0.5  # simclr: NT-Xent temperature

    c.rf = ml_collections.ConfigDict()
    c.rf.t_eps = 1e-3  # training times t ~ U[eps, 1); samplers integrate over [eps, 1]
    c.rf.euler_steps = 10  # the Euler sampler's steps (official "euler10")
    c.rf.rk45_rtol = 1e-5
    c.rf.rk45_atol = 1e-5

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = ml_collections.ConfigDict({m: 1e-4 for m in MODULES})  # Adam learning rate per module
    c.optim.warmup_steps = 5000  # linear warm-up from lr / warmup_steps (official LinearLR(1/5000, 1, 5000))
    c.optim.grad_clip = 1.0  # global gradient norm over all modules
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.ema = ml_collections.ConfigDict({m: 0.9999 for m in MODULES})  # decay; min(decay, (1+n)/(10+n)) per module
    c.module_steps = ml_collections.ConfigDict({m: -1 for m in MODULES})  # train a module this many steps; -1: all

    c.evals = ml_collections.ConfigDict()  # name -> {every_steps, ...evaluator kwargs}; see lzn_jax.evaluators
    c.eval_batch_size = 256
    c.eval_use_ema = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data axis (batch rows are split over it); -1 = all the rest
    c.mesh.model = 1  # devices along the model axis, reserved for tensor parallelism (replicas today); see docs/scaling.md
    c.mesh.fsdp = False  # store params, EMA and Adam moments sharded over the data axis (gathered for compute)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.path = ""  # restore params/EMA from this checkpoint dir (e.g. from lzn_jax.convert) at start
    # Dotted keys (or sections) this run may change from the run whose checkpoints it resumes; see resume_changes.
    c.checkpoint.allow_changes = ()

    c.dtype = "float32"  # compute dtype of the networks (bfloat16 on TPU); params stay float32
    # Matmul/conv precision of the networks: "highest" = float32 products, as the official run; "default" lets
    # TPUs use one bfloat16 pass per product (faster, ~3 significant digits). See docs/scaling.md.
    c.precision = "highest"
    return c


# Keys (and sections) a resumed run may change without changing what it trains: schedules, evaluations, devices.
RESUME_SAFE = (
    "num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "max_consecutive_skips", "evals", "eval_batch_size", "eval_use_ema", "mesh", "checkpoint", "zoning.block_size",
    "data.data_dir", "data.autotune", "data.test_split", "data.eval_crop_fraction",
)  # fmt: skip


def resume_changes(stored_json: str, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (stored, now)}, sorted by key, for each setting `config` changes from the stored config.json of
    the run it resumes, other than RESUME_SAFE and `config.checkpoint.allow_changes` (keys or sections). Keys only
    one side has (a config written by another version) are not compared."""
    stored, now = _flat(json.loads(stored_json)), _flat(json.loads(config.to_json_best_effort()))
    allowed = RESUME_SAFE + tuple(config.checkpoint.allow_changes)
    covered = lambda key: any(key == a or key.startswith(a + ".") for a in allowed)  # noqa: E731
    return {key: (stored[key], now[key]) for key in sorted(set(stored) & set(now))
            if stored[key] != now[key] and not covered(key)}  # fmt: skip


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def link_num_classes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes `config.data.num_classes` the same field as `config.num_classes` (an ml_collections reference).

    One fact, two names: the data pipelines read `data.num_classes` (they see the data section alone), the tasks
    `num_classes`; setting either (`--config.num_classes=3` or `--config.data.num_classes=3`) sets both. Configs
    set `config.num_classes` only. A config read back from JSON holds two plain values: linked again here when they
    agree, reported by `check` when they do not.
    """
    if config.data.num_classes == config.num_classes:
        with config.unlocked():
            config.data.num_classes = config.get_ref("num_classes")
    return config


def from_json(text: str) -> ml_collections.ConfigDict:
    """A config saved as config.json by `lzn_jax.main` (`to_json_best_effort`), read back with num_classes linked."""
    return link_num_classes(ml_collections.ConfigDict(json.loads(text)))


def override(config: ml_collections.ConfigDict, **updates: Any) -> ml_collections.ConfigDict:
    """Sets dotted keys (`override(c, **{"data.image_size": 16})`), with the nearest-key error of `check`."""
    for dotted, value in updates.items():
        node, leaf = _parent(config, dotted)
        node[leaf] = value
    return config


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """Raises ValueError naming the nearest valid key when `dotted` (e.g. "data.image_size") is not in config."""
    _parent(config, dotted)


def _parent(config, dotted):
    """(the section holding the last part of `dotted`, that last part), every part checked."""
    node, where = config, "config"
    *parents, leaf = dotted.split(".")
    for part in parents:
        node, where = _child(node, part, where), f"{where}.{part}"
        if not isinstance(node, ml_collections.ConfigDict):
            raise ValueError(f"{where} is a value, not a section: config.{dotted} does not exist.")
    _child(node, leaf, where)
    return node, leaf


def check(config: ml_collections.ConfigDict, *, evals: bool = True) -> None:
    """Validates a config before any compute starts; raises ValueError naming the key and the fix.

    evals=False leaves `config.evals` unchecked (inference: `api` loads no evaluator, and the files a training
    run's evaluators read need not exist where its checkpoint is used).
    """
    _check_section(config, base_config(), "config")
    data_lib.validate_config(config.data)
    if config.data.num_classes != config.num_classes:
        raise ValueError(
            f"config.num_classes={config.num_classes} but config.data.num_classes={config.data.num_classes}: they are "
            "one fact (the classes the labels take; 1 for unlabeled data). Set config.num_classes alone (base_config "
            "makes data.num_classes follow it), or set both to the same value."
        )
    from lzn_jax import tasks  # deferred: tasks import models, which this module must not need

    if config.task not in tasks.names():
        raise ValueError(f"config.task={config.task!r} is not a task; use one of {tasks.names()}.")
    _positive(config, ("batch_size", "eval_batch_size", "num_train_steps", "log_every_steps", "checkpoint_every_steps",
                       "keep_checkpoints", "max_consecutive_skips", "latent_dim"))  # fmt: skip
    _check_dtype(config.dtype)
    if config.zoning.solver not in ("euler", "dpm_solver++") or config.zoning.label_solver not in ("euler", "dpm_solver++"):
        raise ValueError("config.zoning.solver and label_solver must be 'euler' or 'dpm_solver++'.")
    if not 0.0 <= config.zoning.cutoff < 1.0:
        raise ValueError(f"config.zoning.cutoff={config.zoning.cutoff} must be in [0, 1).")
    for module in MODULES:
        if not 0.0 <= config.ema[module] <= 1.0:
            raise ValueError(f"config.ema.{module}={config.ema[module]} must be a decay in [0, 1].")
    tasks.check_config(config)
    if evals:
        _check_evals(config)


def _check_evals(config) -> None:
    """Each `config.evals` entry names an evaluator, sets only its keyword arguments, each of its default's kind,
    an enabled evaluator's task has the prediction functions it is built from, and the files it reads exist: a
    typo, or an evaluator the composition cannot serve (a reconstruction without an encoder), fails here, not
    after the state is built and the first training steps ran.

    The valid keys come from the evaluator classes' signatures (`evaluators.spec_keys`, `evaluators.needs`).
    """
    from lzn_jax import evaluators, tasks  # deferred: the evaluators import data pipelines and models
    from lzn_jax.evaluators import predict

    task = None

    for name, spec in config.evals.items():
        where = f"config.evals.{name}"
        if not isinstance(spec, (dict, ml_collections.ConfigDict)):
            raise ValueError(f"{where} must be a section of evaluator settings; got {type(spec).__name__} {spec!r}.")
        kind = evaluators.kind_of(name, spec)
        keys = evaluators.spec_keys(kind)
        every = evaluators.every_steps(spec, config.eval_every_steps)
        if not isinstance(every, int) or isinstance(every, bool) or every < -1:
            raise ValueError(f"{where}.every_steps={every!r} must be an integer: N > 0 (every N steps and at the end), "
                             "0 (at the end only) or -1 (off).")  # fmt: skip
        hints = evaluators.spec_hints(kind)
        for key, value in spec.items():
            if key in evaluators.SCHEDULE_KEYS or (key not in keys and "**" in keys):
                continue
            if key not in keys:
                valid = (set(keys) | set(evaluators.SCHEDULE_KEYS)) - {"**"}
                raise ValueError(_unknown_key_message(key, valid, where) + f" (the {kind!r} evaluator's settings)")
            default = keys[key]
            if value is None and type(None) in typing.get_args(hints.get(key)):
                continue  # e.g. shuffle_seed=None: documented, and once refused as "a NoneType; takes a int"
            if default is not inspect.Parameter.empty and default is not None and not _same_kind(value, default):
                raise ValueError(f"{where}.{key}={value!r} is a {type(value).__name__}; the {kind!r} evaluator takes a "
                                 f"{type(default).__name__} (default {default!r}).")  # fmt: skip
            if key in ("split", "splits"):  # every evaluator's name for the splits it reads
                for split in (value,) if key == "split" else value:
                    if split not in data_lib.LOGICAL_SPLITS:
                        raise ValueError(f"{where}.{key}={value!r}: a split is one of {data_lib.LOGICAL_SPLITS} "
                                         "(what they are in the data: data.train_split / data.test_split).")  # fmt: skip
        missing = sorted(k for k, d in keys.items() if d is inspect.Parameter.empty and k != "**" and k not in spec)
        if missing:
            raise ValueError(f"{where}: the {kind!r} evaluator needs {', '.join(missing)}.")
        if every != -1:
            if evaluators.needs_labels(kind) and config.num_classes < 2:
                raise ValueError(f"{where} ({kind!r}) scores against the labels, and config.num_classes="
                                 f"{config.num_classes}: with one class every label is 0 and it would report 1.0. "
                                 f"Switch it off with {where}.every_steps=-1, or use labelled data.")  # fmt: skip
            _check_files(where, kind, {**keys, **spec}, evaluators.FILE_ARGUMENTS.get(kind, ()))
            if task is None:  # a description of the composition: no network is initialised
                task = tasks.build(config)
            for fn_name in evaluators.needs(kind):
                try:
                    predict.check(fn_name, task, who=f"{where} ({kind!r})")
                except ValueError as error:
                    raise ValueError(f"{error} Switch it off with {where}.every_steps=-1.") from None


def _check_files(where: str, kind: str, settings: dict, file_keys: Iterable[str]) -> None:
    for key in file_keys:
        path = settings.get(key)
        if not path:
            raise ValueError(f"{where}.{key} is not set: the {kind!r} evaluator reads that file. Set it, or switch "
                             f"the evaluator off with {where}.every_steps=-1.")  # fmt: skip
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}.{key}={path!r} does not exist (the {kind!r} evaluator reads it); give "
                                    f"the path of a local copy, or switch it off with {where}.every_steps=-1.")  # fmt: skip


def _check_section(section, reference, where: str) -> None:
    """Every key of `section` exists in `reference` with a value of the same kind (recursively).

    Model sections and `evals` are free-form (models.build and the evaluators check their fields by name).
    """
    for key in section.keys():
        if key not in reference:
            raise ValueError(_unknown_key_message(key, set(reference.keys()), where))
        value, default, path = section[key], reference[key], f"{where}.{key}"
        if where == "config" and key in (*MODULES, "evals"):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ValueError(f"{path} must be a section (ConfigDict); got {type(value).__name__} {value!r}.")
        elif isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"{path} must be a section (ConfigDict); got {type(value).__name__} {value!r}.")
            _check_section(value, default, path)
        elif not _same_kind(value, default):
            raise ValueError(f"{path}={value!r} is a {type(value).__name__}; it must be a {type(default).__name__} "
                            f"(default {default!r}).")  # fmt: skip


def _same_kind(value, default) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):  # ints are fine where a float is expected
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return default is None or isinstance(value, type(default))


def _check_dtype(name: str) -> None:
    import jax.numpy as jnp  # deferred: reading a config needs no JAX

    try:
        floating = jnp.issubdtype(jnp.dtype(name), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"config.dtype={name!r} is not a floating-point dtype; use 'float32' or 'bfloat16'.")


def _positive(config, keys: Iterable[str]) -> None:
    for key in keys:
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.{key} must be a positive integer; got {value!r}.")


def _child(node, part, where):
    if part not in node:
        raise ValueError(_unknown_key_message(part, set(node.keys()), where))
    return node[part]


def _unknown_key_message(key, known, where):
    hint = difflib.get_close_matches(key, sorted(known), n=1)
    did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
    return f"Unknown config key {key!r} in {where}.{did_you_mean} Valid keys: {sorted(known)}."
