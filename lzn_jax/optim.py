"""Optimizer and EMA exactly as the official trainers, as pure functions over the module-keyed params dict.

- Adam per module (`optax.multi_transform`), each with its own learning rate and a shared linear warm-up
  (torch `LinearLR(start_factor=1/W, end_factor=1, total_iters=W)` over W steps).
- One global gradient-norm clip over all *trainable* modules (torch `clip_grad_norm_` over the parameters
  that have gradients).
- Modules are frozen after their own number of steps: their gradients are left out of the clip and their
  params, Adam state and EMA stop changing, as when the official trainer sets `requires_grad=False`.
- EMA per module: decay_n = min(decay, (1 + n) / (10 + n)), n counting that module's updates.

The functions take `{module: params}` dicts; the train step passes each module's parameters raveled into one
vector (`flatten`), which keeps the update to a few large element-wise kernels instead of thousands of small
ones — the difference between seconds and minutes of XLA compile time on CPU for NCSN++.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax


def warmup_schedule(lr: float, warmup_steps: int) -> optax.Schedule:
    """lr · (1/W + (1 − 1/W) · min(k, W)/W): torch LinearLR(1/W, 1, W), counted in successful updates."""
    if warmup_steps <= 0:
        return optax.constant_schedule(lr)
    start = 1.0 / warmup_steps
    return lambda count: lr * (start + (1.0 - start) * jnp.minimum(count, warmup_steps) / warmup_steps)


def make_optimizer(optim_cfg, modules: tuple[str, ...]) -> optax.GradientTransformation:
    """Per-module Adam with warm-up; `modules` are the keys of the params dict. Clipping is done by `apply`."""
    transforms = {
        m: optax.chain(
            optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
            optax.scale_by_learning_rate(warmup_schedule(optim_cfg.lr[m], optim_cfg.warmup_steps)),
        )
        for m in modules
    }
    return optax.multi_transform(transforms, {m: m for m in modules})


def flatten(tree_by_module: Mapping[str, object]):
    """{module: pytree} -> ({module: 1-D vector}, {module: unravel function})."""
    pairs = {m: jax.flatten_util.ravel_pytree(t) for m, t in tree_by_module.items()}
    return {m: v for m, (v, _) in pairs.items()}, {m: u for m, (_, u) in pairs.items()}


def unflatten(vectors: Mapping[str, jax.Array], unravel: Mapping[str, object]) -> dict:
    return {m: unravel[m](v) for m, v in vectors.items()}


def trainable(step: jax.Array, module_steps: Mapping[str, int], modules: tuple[str, ...]) -> dict[str, jax.Array]:
    """{module: bool scalar}: still training at `step` (module_steps < 0 means always)."""
    return {m: (step < module_steps[m]) if module_steps[m] >= 0 else jnp.asarray(True) for m in modules}


def global_norm(grads, enabled: Mapping[str, jax.Array]) -> jax.Array:
    """L2 norm over the enabled modules' gradients, scaled first so that huge gradients do not overflow."""
    masked = {m: jax.tree.map(lambda x: jnp.where(enabled[m], x, 0.0), g) for m, g in grads.items()}
    leaves = jax.tree.leaves(masked)
    if not leaves:
        return jnp.zeros(())
    largest = jnp.max(jnp.asarray([jnp.max(jnp.abs(x)) for x in leaves]))
    scale = jnp.where(largest > 0, largest, 1.0)
    return scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves))


def apply(optimizer, grads, opt_state, params, enabled, grad_clip):
    """One optimizer update of the enabled modules. Returns (params, opt_state, grad_norm)."""
    norm = global_norm(grads, enabled)
    scale = jnp.minimum(1.0, grad_clip / (norm + 1e-6)) if grad_clip > 0 else 1.0  # torch clip_grad_norm_
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_params = {m: _keep_if(enabled[m], new_params[m], params[m]) for m in params}
    new_opt_state = _freeze_inner_states(optimizer, new_opt_state, opt_state, enabled)
    return new_params, new_opt_state, norm


def _freeze_inner_states(optimizer, new_state, old_state, enabled):
    """multi_transform keeps one inner state per module: frozen modules keep their old one."""
    inner = {m: _keep_if(enabled[m], new_state.inner_states[m], old_state.inner_states[m]) for m in enabled}
    return new_state._replace(inner_states=inner)


def _keep_if(condition, new, old):
    return jax.tree.map(lambda n, o: jnp.where(condition, n, o), new, old)


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
