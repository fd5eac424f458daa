"""The task protocol and its capabilities: what the API and the evaluators may ask of a task.

Every task implements `Task` (what the training loop uses). What else a task can do depends on its composition
(a generation task without an image encoder cannot embed; one without label anchors cannot classify), so each
task instance names its capabilities in `capabilities`, and for each one it names it implements the matching
interface below. Callers ask `can(task, EMBEDS)` or `require(task, EMBEDS, message)`, never `hasattr`.

| capability   | interface      | what it adds                                                        |
|--------------|----------------|---------------------------------------------------------------------|
| `EMBEDS`     | `Embeds`       | `encoder`, `embed(params, images, apply_head=)`: image encoder      |
| `ZONES`      | `Zones`        | `latent_dim`, `image_latents(params, images, prior, ...)`: encoder + forward flow |
| `GENERATES`  | `Generates`    | `conditional`, `num_classes`, `image_shape`, `sample`, `decode`: image decoder |
| `INVERTS`    | `Inverts`      | `invert(params, images, latent, labels)`: the decoder ODE backwards |
| `CLASSIFIES` | `Classifies`   | `num_classes`, `classify_latents(params, latents, weights)`: label anchors |

`tests/test_tasks_protocol.py` checks that every task of every shipped config implements the interfaces of the
capabilities it names.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import jax

EMBEDS = "embeds"
ZONES = "zones"
GENERATES = "generates"
INVERTS = "inverts"
CLASSIFIES = "classifies"
CAPABILITIES = (EMBEDS, ZONES, GENERATES, INVERTS, CLASSIFIES)


@runtime_checkable
class Task(Protocol):
    """What the training loop needs of every task (see `lzn_jax.tasks`)."""

    modules: tuple[str, ...]  # the params dict keys it trains, e.g. ("encoder", "decoder", "label_anchors")
    capabilities: frozenset[str]  # a subset of CAPABILITIES

    def init(self, rng: jax.Array, batch: dict) -> dict: ...

    def noise(self, rng: jax.Array, batch: dict) -> dict: ...

    def loss(self, params: dict, batch: dict, noise: dict, rng: jax.Array, *, axis_name: Optional[str] = None): ...
    # -> (loss [], metrics {name: []}): means over this device's rows. Under the train step's shard_map,
    # `axis_name` names the data axis (the zoning kernel gathers every device's anchors along it), `rng` is already
    # this device's (the step folds the device index in) and the step averages loss and metrics over devices.


@runtime_checkable
class Embeds(Protocol):
    encoder: Any  # the image encoder module (its signature says whether it has a separate head)

    def embed(self, params, images, *, apply_head: bool = True, train: bool = False, rng=None) -> jax.Array: ...


@runtime_checkable
class Zones(Protocol):
    latent_dim: int

    def image_latents(self, params, images, prior, *, axis_name=None, train=False, rng=None, mask=None) -> jax.Array:
        ...


@runtime_checkable
class Generates(Protocol):
    conditional: bool
    num_classes: int
    image_shape: tuple[int, int, int]

    def sample(self, params, key, labels=None, *, num=None, sampler: str = "euler") -> jax.Array: ...

    def decode(self, params, noise, latent=None, labels=None, *, sampler: str = "euler") -> jax.Array: ...


@runtime_checkable
class Inverts(Protocol):
    def invert(self, params, images, latent=None, labels=None, *, sampler: str = "euler") -> jax.Array: ...


@runtime_checkable
class Classifies(Protocol):
    num_classes: int

    def classify_latents(self, params, latents, weights=None) -> jax.Array: ...


INTERFACES = {EMBEDS: Embeds, ZONES: Zones, GENERATES: Generates, INVERTS: Inverts, CLASSIFIES: Classifies}


def can(task, *capabilities: str) -> bool:
    """Whether `task` has every one of `capabilities`."""
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"Unknown task capabilities {sorted(unknown)}; known: {CAPABILITIES}.")
    return set(capabilities) <= set(task.capabilities)


def require(task, *capabilities: str, message: str) -> None:
    """ValueError(message) unless `task` has every one of `capabilities`."""
    if not can(task, *capabilities):
        raise ValueError(message)


def check(task) -> None:
    """TypeError unless `task` implements `Task` and the interface of every capability it names."""
    if not isinstance(task, Task):
        raise TypeError(f"{type(task).__name__} does not implement the task protocol (modules, capabilities, init, "
                        "noise, loss).")  # fmt: skip
    for capability in task.capabilities:
        if capability not in INTERFACES:
            raise TypeError(f"{type(task).__name__} names an unknown capability {capability!r}; known: {CAPABILITIES}.")
        if not isinstance(task, INTERFACES[capability]):
            raise TypeError(f"{type(task).__name__} names capability {capability!r} but does not implement "
                            f"{INTERFACES[capability].__name__}.")  # fmt: skip
