"""The train state pytree and the jitted train step.

One `TrainState` holds everything a run needs to continue bit-identically: step, params, Adam state, EMA
params and their update counts, the RNG key and the skipped-step counters. `make_train_step` builds one
`jax.jit` with explicit shardings: the task's loss runs under `jax.shard_map` over the `data` axis (each device
its rows, the zoning kernel gathering anchors across devices), the update is a replicated computation.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lzn_jax import optim, parallel


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: dict  # {module: params}
    opt_state: Any  # Adam state: of each module's raveled parameter vector, or under FSDP of its params tree
    ema_params: dict
    ema_counts: dict  # {module: int32 []}: updates each EMA has seen
    rng: jax.Array  # typed PRNG key
    skipped_steps: jax.Array  # int32 []: non-finite steps so far
    consecutive_skips: jax.Array  # int32 []

    def to_items(self) -> dict[str, Any]:
        """The Orbax checkpoint items (see lzn_jax.checkpoint)."""
        meta = {
            "step": self.step,
            "rng": jax.random.key_data(self.rng),
            "ema_counts": self.ema_counts,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
        }
        return {"params": self.params, "ema_params": self.ema_params, "opt_state": self.opt_state, "meta": meta}

    @classmethod
    def from_items(cls, items: dict[str, Any]) -> "TrainState":
        meta = items["meta"]
        return cls(
            step=meta["step"], params=items["params"], opt_state=items["opt_state"], ema_params=items["ema_params"],
            ema_counts=meta["ema_counts"], rng=jax.random.wrap_key_data(meta["rng"]),
            skipped_steps=meta["skipped_steps"], consecutive_skips=meta["consecutive_skips"],
        )  # fmt: skip


def _to_optimizer(tree_by_module, fsdp: bool):
    """How the optimizer and EMA see {module: params}: (view, unravel functions or None).

    Replicated: one raveled vector per module, a few large element-wise kernels instead of thousands of small
    ones (fast compiles). FSDP: the trees themselves, because a vector concatenated from leaves sharded along
    different axes cannot keep each device's shard local (and its length rarely divides the data axis). The
    Adam state follows the view, so a checkpoint's opt_state layout depends on `mesh.fsdp`.
    """
    return (tree_by_module, None) if fsdp else optim.flatten(tree_by_module)


def _from_optimizer(view, unravel):
    return view if unravel is None else optim.unflatten(view, unravel)


def init_fn(task, optimizer, batch_spec, fsdp: bool = False):
    """rng -> TrainState; pure, so `jax.eval_shape` gives the abstract state without allocating it.

    batch_spec: {key: jax.ShapeDtypeStruct} of one (small) batch; only shapes and dtypes matter to init.
    """

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        params = task.init(params_rng, {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()})
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero, params=params, opt_state=optimizer.init(_to_optimizer(params, fsdp)[0]),
            ema_params=jax.tree.map(jnp.copy, params),
            ema_counts={m: zero for m in params}, rng=state_rng, skipped_steps=zero, consecutive_skips=zero,
        )  # fmt: skip

    return init


def state_shardings(abstract_state: TrainState, mesh, fsdp: bool):
    """Params-like trees (params, EMA, Adam moments) follow `parallel.param_shardings`; the rest is replicated."""
    sharded = functools.partial(parallel.param_shardings, mesh=mesh, fsdp=fsdp)
    replicated = parallel.replicated(mesh)
    return TrainState(
        step=replicated, params=sharded(abstract_state.params), opt_state=sharded(abstract_state.opt_state),
        ema_params=sharded(abstract_state.ema_params), ema_counts=jax.tree.map(lambda _: replicated, abstract_state.ema_counts),
        rng=replicated, skipped_steps=replicated, consecutive_skips=replicated,
    )  # fmt: skip


def relayout_opt_state(opt_state, target):
    """An Adam state of the other `mesh.fsdp` layout, converted to `target`'s (ShapeDtypeStructs of this layout).

    The raveled (replicated) layout is a tree prefix of the tree (FSDP) layout: where one holds a module's
    vector, the other holds that module's params tree, whose leaves `optim.flatten` concatenates in tree order.
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


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(task, optimizer, config, mesh, shardings: TrainState):
    """(state, global batch) -> (state, metrics), jitted with the state donated."""
    modules = task.modules
    fsdp = config.mesh.fsdp
    rows = P(parallel.DATA)

    def loss_fn(params, batch, noise, rng):
        params = jax.tree.map(lambda x: jax.reshard(x, P()), params)  # gathered for compute under FSDP
        noise = jax.tree.map(lambda x: jax.reshard(x, rows), noise)
        local = functools.partial(task.loss, axis_name=parallel.DATA)
        return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, rows, P()), out_specs=(P(), P()))(
            params, batch, noise, rng
        )

    def step(state: TrainState, batch):
        rng, noise_rng, dropout_rng = jax.random.split(state.rng, 3)
        noise = task.noise(noise_rng, batch)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, noise, dropout_rng)
        enabled = optim.trainable(state.step, config.module_steps, modules)
        grads, _ = _to_optimizer(grads, fsdp)
        old_params, unravel = _to_optimizer(state.params, fsdp)
        grads = {m: jax.tree.map(lambda x, on=enabled[m]: jnp.where(on, x, 0.0), g) for m, g in grads.items()}
        # A NaN on any device reaches every device through the loss mean and the gradient all-reduce.
        finite = jnp.isfinite(loss) & _all_finite(grads)
        params, opt_state, grad_norm = optim.apply(
            optimizer, grads, state.opt_state, old_params, enabled, config.optim.grad_clip
        )
        ema_params, ema_counts = optim.ema_update(
            _to_optimizer(state.ema_params, fsdp)[0], params, state.ema_counts, config.ema, enabled
        )
        params, ema_params = _from_optimizer(params, unravel), _from_optimizer(ema_params, unravel)

        def keep(new, old):  # a non-finite step changes nothing but the step, the key and the counters
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        skipped = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
            ema_params=keep(ema_params, state.ema_params), ema_counts=keep(ema_counts, state.ema_counts), rng=rng,
            skipped_steps=state.skipped_steps + skipped, consecutive_skips=(state.consecutive_skips + 1) * skipped,
        )  # fmt: skip
        metrics = dict(metrics, grad_norm=grad_norm, skipped=skipped.astype(jnp.float32))
        metrics.update({f"{m}_enabled": enabled[m].astype(jnp.float32) for m in modules})
        return new_state, metrics

    batch_sharding = parallel.batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )
