"""The train state pytree and the jitted train step.

One `TrainState` holds everything a run needs to continue bit-identically: step, params, Adam state, EMA
params and their update counts, the RNG key and the skipped-step counters. `make_train_step` builds one
`jax.jit` with explicit shardings: the task's loss runs under `jax.shard_map` over the `data` axis (each device
its rows, the zoning kernel gathering anchors across devices; under FSDP each device gathers the params there
too, so their gradients are reduce-scattered); under FSDP the update runs in a second `shard_map`, each device on
its own shards (`_sharded_update`), and on replicated params as is.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
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


def init_fn(task, optimizer: optim.Optimizer, batch_spec):
    """rng -> TrainState; pure, so `jax.eval_shape` gives the abstract state without allocating it.

    batch_spec: {key: jax.ShapeDtypeStruct} of one (small) batch; only shapes and dtypes matter to init.
    """

    def init(rng):
        params_rng, state_rng = jax.random.split(rng)
        params = task.init(params_rng, {k: jnp.zeros(v.shape, v.dtype) for k, v in batch_spec.items()})
        zero = jnp.zeros((), jnp.int32)
        return TrainState(
            step=zero, params=params, opt_state=optimizer.init(params),
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


def _gather_shards(shard: jax.Array, spec: P) -> jax.Array:
    """A parameter whole on every device: its FSDP shards all-gathered along `data` (as is when replicated).

    Gathered inside the step's shard_map, so the gradient's transpose is a reduce-scatter straight into each
    device's shard. Gathered before it (a reshard to replicated), the gradient came out of the shard_map whole
    and XLA's CPU compiler all-reduced it and sliced the shard out (docs/scaling.md, "FSDP gradients", has the
    collective bytes of both).
    """
    if parallel.DATA not in spec:
        return shard
    return jax.lax.all_gather(shard, parallel.DATA, axis=tuple(spec).index(parallel.DATA), tiled=True)


def _sharded_update(optimizer: optim.Optimizer, mesh, shardings: TrainState):
    """`optimizer.update`, run on each device's own shards under FSDP (as is when the params are replicated).

    On the whole sharded trees, XLA's partitioner compiled Adam, the clip and the EMA leaf by leaf: the FSDP train
    step of the `:runlocal` NCSN++ configs took 52–55 s to compile on 8 CPU devices, 14–16 s replicated. Inside a
    `shard_map` each device ravels its own shards into one vector per module, as the replicated layout does, and
    only the norm and finiteness are reduced: 24–27 s (`experiments/bench_fsdp_compile.py`).
    """
    specs = functools.partial(jax.tree.map, lambda sharding: sharding.spec)
    param_specs = specs(shardings.params)
    split = jax.tree.map(lambda spec: parallel.DATA in spec, param_specs)
    if not any(jax.tree.leaves(split)):
        return lambda step, loss_finite, *trees: optimizer.update(step, *trees, loss_finite=loss_finite)

    def local(step, loss_finite, grads, params, opt_state, ema_params, ema_counts):
        update = optimizer.update(step, grads, params, opt_state, ema_params, ema_counts, loss_finite=loss_finite,
                                  axis_name=parallel.DATA, split=split)  # fmt: skip
        return update.params, update.opt_state, update.ema_params, update.ema_counts, update.grads_finite, update.metrics

    state_specs = (param_specs, specs(shardings.opt_state), param_specs, specs(shardings.ema_counts))
    # check_vma=False: a replicated leaf's update reads the raveled vector that also holds this device's shards of
    # the split leaves, so the type system cannot see that it is the same on every device; it is (element-wise on
    # replicated inputs, scaled by the all-reduced norm).
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), param_specs, *state_specs),
                            out_specs=(*state_specs, P(), P()), check_vma=False)  # fmt: skip
    return lambda *args: optim.Update(*sharded(*args))


def make_train_step(task, optimizer: optim.Optimizer, mesh, shardings: TrainState):
    """(state, global batch) -> (state, metrics), jitted with the state donated.

    The task gives the loss, `optimizer` the whole update (Adam, clip, freezing, EMA); the step adds the sharding,
    the draws of the step and the skipping of non-finite steps.
    """
    rows = P(parallel.DATA)
    param_specs = jax.tree.map(lambda sharding: sharding.spec, shardings.params)

    def device_loss(params, batch, noise, rng):
        """One device's rows: its own dropout key; the loss and metrics averaged over the devices (each holds the
        same number of rows, so this is the global mean). `params` are this device's shards (whole when replicated)."""
        params = jax.tree.map(_gather_shards, params, param_specs)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.DATA))
        loss, metrics = task.loss(params, batch, noise, rng, axis_name=parallel.DATA)
        return jax.lax.pmean((loss, metrics), parallel.DATA)

    def loss_fn(params, batch, noise, rng):
        noise = jax.tree.map(lambda x: jax.reshard(x, rows), noise)
        return jax.shard_map(device_loss, mesh=mesh, in_specs=(param_specs, rows, rows, P()), out_specs=(P(), P()))(
            params, batch, noise, rng
        )

    update_fn = _sharded_update(optimizer, mesh, shardings)

    def step(state: TrainState, batch):
        rng, noise_rng, dropout_rng = jax.random.split(state.rng, 3)
        noise = task.noise(noise_rng, batch)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, noise, dropout_rng)
        update = update_fn(state.step, jnp.isfinite(loss), grads, state.params, state.opt_state, state.ema_params,
                           state.ema_counts)  # fmt: skip
        # A NaN on any device reaches every device through the loss mean and the gradient all-reduce; such a step
        # changes nothing but the step, the key and the counters.
        skipped = (~(jnp.isfinite(loss) & update.grads_finite)).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1, params=update.params, opt_state=update.opt_state, ema_params=update.ema_params,
            ema_counts=update.ema_counts, rng=rng,
            skipped_steps=state.skipped_steps + skipped, consecutive_skips=(state.consecutive_skips + 1) * skipped,
        )  # fmt: skip
        return new_state, dict(metrics, **update.metrics, skipped=skipped.astype(jnp.float32))

    batch_sharding = parallel.batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )
