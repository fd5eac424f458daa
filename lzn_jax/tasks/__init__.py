"""Task compositions: each task is one pure loss over the module-keyed params, plus what its evals need.

A task object holds the Flax module definitions and the numbers its loss uses (no params, no state):

- `modules`: the params dict keys it trains, e.g. ("encoder", "decoder", "label_anchors").
- `init(rng, batch) -> params`: shape-first friendly (works under `jax.eval_shape`).
- `noise(rng, batch) -> dict`: every random draw of a step for the *global* batch, one row per example, so a
  step's randomness does not depend on how the batch is split over devices. A batch that carries recorded
  draws under `batch["noise"]` replays them instead (`common.draws`: the one hook that injects randomness).
- `loss(params, batch, noise, rng, *, axis_name) -> (loss, metrics)`: runs on one device's rows inside
  `jax.shard_map` (axis_name given) or on the whole batch (None); loss and metrics are averaged over devices.
- `capabilities`: what else it can do (embed, zone, generate, invert, classify), each with its interface:
  `protocol.py`. The API and the evaluators ask `protocol.can(task, ...)`, never `hasattr`.

Tasks are looked up by the config's `task` string here, and nowhere else.
"""

from __future__ import annotations

import ml_collections

from lzn_jax import models
from lzn_jax.tasks import common, generation, protocol, representation, simclr
from lzn_jax.tasks.protocol import (  # noqa: F401 -- the capability names and checks, as tasks.EMBEDS, tasks.can
    CAPABILITIES, CLASSIFIES, EMBEDS, GENERATES, INVERTS, ZONES, can, require,
)

_TASKS = {
    "generation": generation.GenerationTask,
    "representation": representation.RepresentationTask,
    "simclr": simclr.SimCLRTask,
}


def names() -> tuple[str, ...]:
    """The task names `config.task` may take."""
    return tuple(_TASKS)


def build(config: ml_collections.ConfigDict):
    """The task object the config composes."""
    if config.task not in _TASKS:
        raise ValueError(f"config.task={config.task!r} is not a task; use one of {sorted(_TASKS)}.")
    task = _TASKS[config.task].from_config(config)
    protocol.check(task)
    return task


def model_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """{module: complete model section} of the modules the composition has — what `models.build` takes.

    Fields the composition determines (latent sizes, label inputs) are filled in from the config.
    """
    return _TASKS[config.task].model_configs(config)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Task-specific checks (which modules must be present; networks that fit the image size), before compute."""
    _TASKS[config.task].check_config(config)
    for name, section in model_configs(config).items():
        models.build(section).check_image_size(config.data.image_size, f"config.{name}")
