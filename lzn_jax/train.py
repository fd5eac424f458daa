"""The training loop: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir)`.

Everything a run writes lands in `workdir`: config.json, TensorBoard events, metrics.jsonl, PNG grids and
Orbax checkpoints (workdir/checkpoints). A restarted run resumes from the newest complete checkpoint with the
same data order, RNG streams, EMA, optimizer and learning-rate schedule, so it ends where an uninterrupted run
would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from clu import parameter_overview

from lzn_jax import checkpoint, configlib, data, evaluators, optim, parallel, tasks, train_state

# `writers` and clu's periodic actions import TensorFlow (CLU's TensorBoard writer): they are imported where the
# loop needs them, so `build` and `batch_spec` run where TensorFlow is not installed (experiments/device_check.sh
# on a bare GPU machine, the TPU scale rehearsal).


class TooManySkippedSteps(RuntimeError):
    """Training stopped because `max_consecutive_skips` steps in a row had a non-finite loss or gradient."""


@dataclasses.dataclass
class Run:
    """What setting up a run produces; `train_and_evaluate` and `evaluate` share it."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    task: object
    optimizer: object
    state: train_state.TrainState
    shardings: train_state.TrainState
    manager: object
    start_step: int


def check_workdir(workdir: str) -> None:
    """Fails before any compute when the workdir cannot be written (local paths; gs:// is left to Orbax)."""
    if "://" in workdir:
        return
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise PermissionError(f"--workdir={workdir!r} is not writable ({error}); choose a directory you can write to.") from error


def batch_spec(config, batch_size: int) -> dict:
    """{key: ShapeDtypeStruct} of a batch, from the data config (no data is read)."""
    shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    spec = {"image": jax.ShapeDtypeStruct(shape, jnp.float32), "label": jax.ShapeDtypeStruct(shape[:1], jnp.int32)}
    if config.data.num_views == 2:
        spec["image2"] = spec["image"]
    return spec


@dataclasses.dataclass
class Built:
    """The system a config describes, shapes only: nothing is allocated or computed yet.

    `train.setup` (and so `main`), the tests, the scale rehearsal and the benchmarks all build through `build`.
    """

    task: object
    optimizer: object
    init: object  # rng -> TrainState (pure; jit it with out_shardings=shardings)
    abstract_state: train_state.TrainState  # ShapeDtypeStructs
    shardings: train_state.TrainState  # NamedShardings, replicated or FSDP as config.mesh.fsdp says


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Built:
    """Task, optimizer, init function, abstract state and its shardings for `config` on `mesh` (no compute)."""
    task = tasks.build(config)
    optimizer = optim.make_optimizer(config.optim, task.modules)
    init = train_state.init_fn(task, optimizer, batch_spec(config, 2), fsdp=config.mesh.fsdp)
    abstract_state = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = train_state.state_shardings(abstract_state, mesh, config.mesh.fsdp)
    return Built(task, optimizer, init, abstract_state, shardings)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates everything, builds mesh/task/state and restores the newest checkpoint (or checkpoint.path)."""
    configlib.check(config)
    check_workdir(workdir)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    parallel.check_batch_size(config.batch_size, mesh)
    data.num_examples(config.data, "train")  # a missing dataset fails here, before compute
    built = build(config, mesh)
    task, optimizer, init, shardings = built.task, built.optimizer, built.init, built.shardings
    rng = jax.random.key(config.seed)
    target = _abstract_items(built.abstract_state, shardings, mesh)
    manager = checkpoint.manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
    start = time.perf_counter()
    restored = checkpoint.restore_latest(manager, target)
    if restored is not None:
        step, items = restored
        state = train_state.TrainState.from_items(items)
        logging.info("Resumed from %s at step %d (restored in %.2f s).", manager.directory, step, time.perf_counter() - start)
    else:
        state = jax.jit(init, out_shardings=shardings)(rng)
        if config.checkpoint.path:
            loaded = checkpoint.restore_params(config.checkpoint.path, target)
            state = state.replace(params=loaded["params"], ema_params=loaded["ema_params"])
            logging.info("Loaded params and EMA params from %s.", config.checkpoint.path)
    return Run(config, workdir, mesh, task, optimizer, state, shardings, manager, int(state.step))


def _abstract_items(abstract_state, shardings, mesh) -> dict:
    """ShapeDtypeStructs (with shardings) of the checkpoint items: the target Orbax restores into.

    The params-like items take their shardings from `shardings`; `meta` (counters, key data) is replicated,
    as `train_state.state_shardings` places it.
    """
    items = jax.eval_shape(lambda state: state.to_items(), abstract_state)
    placed = {"params": shardings.params, "ema_params": shardings.ema_params, "opt_state": shardings.opt_state}
    placed["meta"] = jax.tree.map(lambda _: parallel.replicated(mesh), items["meta"])
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), items, placed)


def _write_config(config, workdir) -> None:
    from lzn_jax import writers

    if jax.process_index() == 0:
        writers.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


class _MetricAverager:
    """Sums step metrics on device (no host sync per step); non-finite (skipped) steps are left out."""

    def __init__(self):
        self.sums, self.kept, self.steps, self.skipped = None, 0.0, 0, 0.0

    def add(self, metrics):
        weight = 1.0 - metrics["skipped"]
        clean = {k: jnp.where(weight > 0, v, 0.0) for k, v in metrics.items() if k != "skipped"}
        self.sums = clean if self.sums is None else jax.tree.map(jnp.add, self.sums, clean)
        self.kept = self.kept + weight
        self.skipped = self.skipped + metrics["skipped"]
        self.steps += 1

    def result(self) -> dict[str, float]:
        kept = float(self.kept)
        out = {f"train/{k}": float(v) / kept if kept else float("nan") for k, v in self.sums.items()}
        out["train/skipped_in_window"] = float(self.skipped)
        return out


def _evaluators(run: Run, writer):
    """The evaluators of config.evals; those with every_steps = -1 are switched off."""
    return [
        evaluators.build(name, spec, task=run.task, config=run.config, workdir=run.workdir, mesh=run.mesh, writer=writer)
        for name, spec in run.config.evals.items()
        if spec.get("every_steps", run.config.eval_every_steps) != -1
    ]


def _run_evals(run: Run, evals, state, step: int) -> dict[str, float]:
    params = state.ema_params if run.config.eval_use_ema else state.params
    out = {}
    for ev in evals:
        start = time.perf_counter()
        out.update(dict(ev.run(params, step)))
        logging.info("Evaluator %s took %.1f s.", ev.name, time.perf_counter() - start)
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
    """Trains `config.num_train_steps` steps (resuming if workdir has checkpoints) and runs the evaluators."""
    from clu import periodic_actions

    from lzn_jax import writers

    run = setup(config, workdir)
    _write_config(config, workdir)
    writer = writers.create(workdir)
    if run.start_step == 0:
        parameter_overview.log_parameter_overview(run.state.params)
    step_fn = train_state.make_train_step(run.task, run.optimizer, config, run.mesh, run.shardings)
    batches = data.train_iterator(
        config.data, batch_size=config.batch_size, seed=config.seed, start_step=run.start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    evals = _evaluators(run, writer)
    report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
    skip_check_every = max(1, min(config.log_every_steps, config.max_consecutive_skips))
    state, averager = run.state, _MetricAverager()
    with jax.set_mesh(run.mesh), _saves_completed(run.manager):
        for step in range(run.start_step + 1, config.num_train_steps + 1):
            state, metrics = step_fn(state, parallel.global_batch(next(batches), run.mesh))
            averager.add(metrics)
            report(step)
            if step % skip_check_every == 0 and int(state.consecutive_skips) >= config.max_consecutive_skips:
                _save(run, state, step)
                raise TooManySkippedSteps(
                    f"{int(state.consecutive_skips)} consecutive steps had a non-finite loss or gradient (step {step}); "
                    f"the last good state is saved in {run.manager.directory}. Lower the learning rates or check the data."
                )
            final = step == config.num_train_steps
            scalars = {}
            if step % config.log_every_steps == 0 or final:
                scalars.update(averager.result())
                scalars["train/skipped_steps"] = int(state.skipped_steps)
                averager = _MetricAverager()
            due = [e for e in evals if final or (e.every_steps > 0 and step % e.every_steps == 0)]
            if due:
                scalars.update(_run_evals(run, due, state, step))
            if scalars:
                writer.write_scalars(step, scalars)
            if step % config.checkpoint_every_steps == 0 or final:
                _save(run, state, step)
    writer.flush()
    return state


@contextlib.contextmanager
def _saves_completed(manager):
    """Waits for the asynchronous checkpoint writes on the way out, also when the loop stops with an error."""
    try:
        yield
    finally:
        manager.wait_until_finished()


def _save(run: Run, state, step: int) -> None:
    if step not in run.manager.all_steps():
        checkpoint.save(run.manager, step, state.to_items())


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs every evaluator in config.evals once on the newest checkpoint (or checkpoint.path)."""
    from lzn_jax import writers

    run = setup(config, workdir)
    if run.start_step == 0 and not config.checkpoint.path:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints and no config.checkpoint.path: nothing to evaluate.")
    writer = writers.create(workdir)
    with jax.set_mesh(run.mesh):
        results = _run_evals(run, _evaluators(run, writer), run.state, run.start_step)
    writer.write_scalars(run.start_step, results)
    writer.flush()
    if jax.process_index() == 0:
        writers.write_text(os.path.join(workdir, f"eval_{run.start_step}.json"), json.dumps(results, indent=2))
    return results
