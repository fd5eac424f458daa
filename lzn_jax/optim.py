"""The whole parameter update of a train step, exactly as the official trainers, in one place: `Optimizer`.

- Adam per module (`optax.multi_transform`), each with its own learning rate and a shared linear warm-up
  (torch `LinearLR(start_factor=1/W, end_factor=1, total_iters=W)` over W steps).
- One global gradient-norm clip over all *trainable* modules (torch `clip_grad_norm_` over the parameters
  that have gradients).
- Modules are frozen after their own number of steps: their gradients are left out of the clip and their
  params, Adam state and EMA stop changing, as when the official trainer sets `requires_grad=False`.
- EMA per module: decay_n = min(decay, (1 + n) / (10 + n)), n counting that module's updates.

`build(config, modules)` reads every setting of the update (`optim`, `module_steps`, `ema`, `mesh.fsdp`) once;
the train step calls `Optimizer.init` and `Optimizer.update` and reads no config. Adam and the EMA see each
module's parameters raveled into one vector (`flatten`), which keeps the update to a few large element-wise kernels
instead of thousands of small ones — the difference between seconds and minutes of XLA compile time for NCSN++.
Under FSDP the train step runs the update inside a `shard_map`, on each device's own shards, raveled there (a vector
concatenated from leaves sharded along different axes could not keep each device's shard local); only the clip's
norm and the finiteness check are reduced over the devices. The stored Adam state is raveled under the replicated
layout and a tree of the params' shapes and shardings under FSDP, so a checkpoint's Adam state layout depends on
`mesh.fsdp`; `relayout_opt_state` converts one into the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax


def warmup_schedule(lr: float, warmup_steps: int) -> optax.Schedule:
    """lr · (1/W + (1 − 1/W) · min(k, W)/W): torch LinearLR(1/W, 1, W), counted in successful updates."""
    if warmup_steps <= 0:
        return optax.constant_schedule(lr)
    start = 1.0 / warmup_steps
    return lambda count: lr * (start + (1.0 - start) * jnp.minimum(count, warmup_steps) / warmup_steps)


def make_optimizer(optim_cfg, modules: tuple[str, ...]) -> optax.GradientTransformation:
    """Per-module Adam with warm-up; `modules` are the keys of the params dict. Clipping is done by `Optimizer`."""
    transforms = {
        m: optax.chain(
            optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
            optax.scale_by_learning_rate(warmup_schedule(optim_cfg.lr[m], optim_cfg.warmup_steps)),
        )
        for m in modules
    }
    return optax.multi_transform(transforms, {m: m for m in modules})


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Update:
    """What `Optimizer.update` returns: the new params, Adam state and EMA, and what the step logs."""

    params: dict
    opt_state: Any
    ema_params: dict
    ema_counts: dict
    grads_finite: jax.Array  # bool []: every gradient of a trainable module is finite
    metrics: dict  # {"grad_norm": [], "<module>_enabled": []} float32


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Adam per module with warm-up, freezing after `module_steps`, one global clip, and the EMA.

    Pure: `init` and `update` are traced inside the jitted train step. `ravel` is the stored Adam state's layout:
    one raveled vector per module (True, the replicated layout) or the params trees (False, FSDP).
    """

    modules: tuple[str, ...]
    tx: optax.GradientTransformation
    module_steps: Mapping[str, int]  # freeze a module at this step; < 0: never
    grad_clip: float  # <= 0: no clip
    ema_decays: Mapping[str, float]
    ravel: bool

    def trainable(self, step: jax.Array) -> dict[str, jax.Array]:
        return trainable(step, self.module_steps, self.modules)

    def update(self, step, grads, params, opt_state, ema_params, ema_counts, *, loss_finite=True, axis_name=None,
               split=None) -> Update:
        """One update at `step` (the state's step, int32 []); all trees are {module: params-like}.

        A step whose loss (`loss_finite`, bool []) or any trainable gradient is not finite changes nothing: the
        train step skips it (and counts it).

        Under FSDP the train step calls it inside a `shard_map` on each device's shards: `split` ({module: one bool
        per params leaf}) marks the leaves split over `axis_name`, whose squares and non-finite entries are summed
        over it for the clip's norm and the finiteness check; every other operation is element-wise.
        """
        enabled = self.trainable(step)
        if split is not None:  # before raveling: which entries are this device's share of a split leaf
            masked = {m: jax.tree.map(lambda x, on=enabled[m]: jnp.where(on, x, 0.0), g) for m, g in grads.items()}
            norm, finite = global_norm(masked, split, axis_name), _all_finite(masked, split, axis_name)
        grads = {m: jnp.where(enabled[m], g, 0.0) for m, g in flatten(grads)[0].items()}
        if split is None:
            norm, finite = global_norm(grads), _all_finite(grads)
        on = {m: enabled[m] & finite & loss_finite for m in self.modules}  # modules this step changes
        old_params, unravel = flatten(params)
        raveled_state = opt_state if self.ravel else relayout_opt_state(opt_state, jax.eval_shape(self.tx.init, old_params))
        scale = jnp.minimum(1.0, self.grad_clip / (norm + 1e-6)) if self.grad_clip > 0 else 1.0  # clip_grad_norm_
        updates, new_state = self.tx.update(jax.tree.map(lambda g: g * scale, grads), raveled_state, old_params)
        new_params = optax.apply_updates(old_params, updates)
        new_params = {m: _keep_if(on[m], new_params[m], old_params[m]) for m in old_params}
        new_state = _freeze_inner_states(new_state, raveled_state, on)
        new_ema, new_counts = ema_update(flatten(ema_params)[0], new_params, ema_counts, self.ema_decays, on)
        metrics = {"grad_norm": norm, **{f"{m}_enabled": enabled[m].astype(jnp.float32) for m in self.modules}}
        return Update(
            params=unflatten(new_params, unravel), opt_state=new_state if self.ravel else relayout_opt_state(new_state, opt_state),
            ema_params=unflatten(new_ema, unravel), ema_counts=new_counts, grads_finite=finite, metrics=metrics,
        )  # fmt: skip

    def init(self, params: dict):
        """The Adam state of {module: params} in this optimizer's layout."""
        return self.tx.init(flatten(params)[0] if self.ravel else params)


def build(config, modules: tuple[str, ...]) -> Optimizer:
    """The update `config` describes (`optim`, `module_steps`, `ema`, `mesh.fsdp`) for the params' `modules`."""
    return Optimizer(
        modules=tuple(modules), tx=make_optimizer(config.optim, modules),
        module_steps={m: int(config.module_steps[m]) for m in modules}, grad_clip=float(config.optim.grad_clip),
        ema_decays={m: float(config.ema[m]) for m in modules}, ravel=not config.mesh.fsdp,
    )  # fmt: skip


def flatten(tree_by_module: Mapping[str, object]):
    """{module: pytree} -> ({module: 1-D vector}, {module: unravel function})."""
    pairs = {m: jax.flatten_util.ravel_pytree(t) for m, t in tree_by_module.items()}
    return {m: v for m, (v, _) in pairs.items()}, {m: u for m, (_, u) in pairs.items()}


def unflatten(vectors: Mapping[str, jax.Array], unravel: Mapping[str, object]) -> dict:
    return {m: unravel[m](v) for m, v in vectors.items()}


def trainable(step: jax.Array, module_steps: Mapping[str, int], modules: tuple[str, ...]) -> dict[str, jax.Array]:
    """{module: bool scalar}: still training at `step` (module_steps < 0 means always)."""
    return {m: (step < module_steps[m]) if module_steps[m] >= 0 else jnp.asarray(True) for m in modules}


def global_norm(grads, split=None, axis_name=None) -> jax.Array:
    """L2 norm over all gradients (frozen modules' are zero), scaled first so that huge gradients do not overflow.

    With `split` (a bool per leaf) the leaves it marks are one device's share, summed over `axis_name`.
    """
    leaves = jax.tree.leaves(grads)
    if not leaves:
        return jnp.zeros(())
    largest = jnp.max(jnp.asarray([jnp.max(jnp.abs(x)) for x in leaves]))
    if split is not None:
        largest = jax.lax.pmax(largest, axis_name)
    scale = jnp.where(largest > 0, largest, 1.0)
    if split is None:
        return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))
    squares = [jnp.sum(jnp.square(x / scale)) for x in leaves]
    flags = jax.tree.leaves(split)
    shared = jax.lax.psum(sum((q for q, f in zip(squares, flags) if f), jnp.zeros(())), axis_name)
    return scale * jnp.sqrt(sum((q for q, f in zip(squares, flags) if not f), shared))


def _freeze_inner_states(new_state, old_state, enabled):
    """multi_transform keeps one inner state per module: frozen modules keep their old one."""
    inner = {m: _keep_if(enabled[m], new_state.inner_states[m], old_state.inner_states[m]) for m in enabled}
    return new_state._replace(inner_states=inner)


def _keep_if(condition, new, old):
    return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)


def _all_finite(tree, split=None, axis_name=None) -> jax.Array:
    """Whether every entry is finite; with `split`, the leaves it marks are checked on every device's share."""
    if split is None:
        return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
    bad = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    flags = jax.tree.leaves(split)
    shared = jax.lax.psum(sum((b for b, f in zip(bad, flags) if f), jnp.zeros((), jnp.int32)), axis_name)
    return sum((b for b, f in zip(bad, flags) if not f), shared) == 0


def ema_update(ema_params, params, counts, decays: Mapping[str, float], enabled):
    """EMA of each enabled module with the official warm-up of the decay. Returns (ema_params, counts)."""
    new_ema, new_counts = {}, {}
    for m in params:
        n = counts[m] + 1
        decay = jnp.minimum(decays[m], (1.0 + n) / (10.0 + n))
        moved = jax.tree.map(lambda e, p: e - (1.0 - decay) * (e - p), ema_params[m], params[m])
        new_ema[m] = _keep_if(enabled[m], moved, ema_params[m])
        new_counts[m] = jnp.where(enabled[m], n, counts[m])
    return new_ema, new_counts


def relayout_opt_state(opt_state, target):
    """An Adam state of the other `mesh.fsdp` layout, converted to `target`'s (ShapeDtypeStructs of this layout).

    The raveled (replicated) layout is a tree prefix of the tree (FSDP) layout: where one holds a module's
    vector, the other holds that module's params tree, whose leaves `flatten` concatenates in tree order.
    """
    if len(jax.tree.leaves(target)) >= len(jax.tree.leaves(opt_state)):  # raveled -> trees
        return jax.tree.map(_unravel_like, opt_state, target)
    return jax.tree.map(lambda like, tree: _ravel(tree).reshape(like.shape), target, opt_state)


def _ravel(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _unravel_like(vector, like):
    """vector [sum of sizes] -> a tree of `like`'s structure and shapes (the inverse of `_ravel`)."""
    leaves, treedef = jax.tree.flatten(like)
    ends = np.cumsum([leaf.size for leaf in leaves])
    parts = [jnp.ravel(vector)[end - leaf.size : end].reshape(leaf.shape) for leaf, end in zip(leaves, ends)]
    return treedef.unflatten(parts)
