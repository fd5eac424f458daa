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
import signal
import socket
import sys
import threading
import time
import uuid

import jax
import jax.numpy as jnp
import ml_collections
from clu import parameter_overview

from lzn_jax import checkpoint, configlib, data, evaluators, files, optim, parallel, run_lock, tasks, train_state

# `writers` and clu's periodic actions import TensorFlow (CLU's TensorBoard writer): they are imported where the
# loop needs them (`files` and the evaluators import it only when a file is touched), so `build` and `batch_spec` run where TensorFlow is not installed (experiments/device_check.sh
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
    optimizer: optim.Optimizer
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
        # Unique per host and process: the hosts of a pod probe one shared workdir, and containers repeat PIDs.
        probe = os.path.join(workdir, f".write_test_{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise PermissionError(f"--workdir={workdir!r} is not writable ({error}); choose a directory you can write to.") from error


@dataclasses.dataclass
class Built:
    """The system a config describes, shapes only: nothing is allocated or computed yet.

    `train.setup` (and so `main`), the tests, the scale rehearsal and the benchmarks all build through `build`.
    """

    task: object
    optimizer: optim.Optimizer
    init: object  # rng -> TrainState (pure; jit it with out_shardings=shardings)
    abstract_state: train_state.TrainState  # ShapeDtypeStructs
    shardings: train_state.TrainState  # NamedShardings, replicated or FSDP as config.mesh.fsdp says

    def fresh_state(self, rng: jax.Array) -> train_state.TrainState:
        """The initial state, each array created where `shardings` places it (never whole on one device)."""
        init = jax.jit(self.init, out_shardings=self.shardings).lower(rng)
        return init.compile(compiler_options=_init_compiler_options(self.shardings))(rng)


CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _init_compiler_options(shardings) -> dict:
    """XLA options of the one-off init program: on CPU, no LLVM optimisation (CPU_INIT_COMPILER_OPTIONS).

    Init is some thousands of random fills that run once. XLA's CPU backend spends about a minute optimising them
    for a tiny digits model and a quarter of that without; the unoptimised fills run slower, which only shows at
    paper size (seconds for gen_cifar10): experiments/bench_compile.py, docs/results/compile_cpu.json. The values
    may differ from an optimised build in the last float bit (the normal draws' inverse error function), as they
    do between backends. Other backends compile as usual.
    """
    platforms = {device.platform for device in jax.tree.leaves(shardings)[0].device_set}
    return CPU_INIT_COMPILER_OPTIONS if platforms == {"cpu"} else {}


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Built:
    """Task, optimizer, init function, abstract state and its shardings for `config` on `mesh` (no compute)."""
    task = tasks.build(config)
    optimizer = optim.build(config, task.modules)
    init = train_state.init_fn(task, optimizer, data.batch_spec(config.data, 2))
    abstract_state = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = train_state.state_shardings(abstract_state, mesh, config.mesh.fsdp)
    return Built(task, optimizer, init, abstract_state, shardings)


def setup(config: ml_collections.ConfigDict, workdir: str, *, resuming: bool = True) -> Run:
    """Validates everything, builds mesh/task/state and restores the newest checkpoint (or checkpoint.path).

    resuming: training goes on from the checkpoints, so `config` must train what the run that wrote them trained
    (`check_resume`); False for `evaluate`, which only reads them."""
    configlib.check(config)
    check_workdir(workdir)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    parallel.check_batch_size(config.batch_size, mesh)
    data.steps_per_epoch(config.data, batch_size=config.batch_size)  # a missing dataset, or one smaller than a batch
    built = build(config, mesh)
    task, optimizer, shardings = built.task, built.optimizer, built.shardings
    target = _abstract_items(built.abstract_state, shardings, mesh)
    # Evaluating reads the checkpoints only: a writable manager deletes every `*.orbax-checkpoint-tmp` it finds,
    # and an evaluation started beside a live training run deleted the save it was writing (the run then died).
    manager = checkpoint.manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                                 read_only=not resuming)  # fmt: skip
    if resuming and manager.all_steps():
        check_resume(config, workdir)
        if config.checkpoint.path:
            logging.info("--workdir has checkpoints: resuming from them; config.checkpoint.path (%s) is not used.",
                         config.checkpoint.path)  # fmt: skip
    start = time.perf_counter()
    restored = _restore_latest(config, mesh, manager, target, set_aside=resuming)  # evaluating renames nothing
    if restored is not None:
        step, items = restored
        state = train_state.TrainState.from_items(items)
        logging.info("Resumed from %s at step %d (restored in %.2f s).", manager.directory, step, time.perf_counter() - start)
    else:
        state = built.fresh_state(jax.random.key(config.seed))
        if config.checkpoint.path:
            loaded = checkpoint.restore_params(config.checkpoint.path, target)
            state = state.replace(params=loaded["params"], ema_params=loaded["ema_params"])
            logging.info("Loaded params and EMA params from %s.", config.checkpoint.path)
    return Run(config, workdir, mesh, task, optimizer, state, shardings, manager, int(state.step))


class ResumeConfigError(ValueError):
    """The config of a resumed run changes what the run trains (see `check_resume`)."""


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before restoring: a run resumed from `workdir`'s checkpoints keeps the settings that shape training (seed,
    data, model, losses, optimizer; `configlib.resume_changes`); schedules, evaluators and the mesh may change.
    A run that resumed with another learning rate, seed or dataset would mix two experiments under one name."""
    changes = _changes_from_the_run(config, workdir)
    if changes:
        flags = " ".join(f"--config.checkpoint.allow_changes={key}" for key in changes)
        raise ResumeConfigError(
            f"--workdir={workdir} holds checkpoints of a run with other settings ({len(changes)} differ):\n  "
            + "\n  ".join(changes.values()) + "\nResume with the settings of its config.json; or start a new "
            f"--workdir from these weights with --config.checkpoint.path={os.path.join(workdir, 'checkpoints')}; or, "
            f"to change them on purpose, {flags}"
        )


def _warn_eval_changes(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Names the settings an evaluation changes from the run that wrote the workdir (its config.json), in a warning:
    only array shapes must match, so a setting left off the eval command (zoning.prior_scale, say) was evaluated
    differently from the run without a word. (A deliberate change is allowed: it is an evaluation.)"""
    changes = _changes_from_the_run(config, workdir)
    if changes:
        logging.warning("--mode=eval with %d setting(s) other than the run's (%s): %s", len(changes),
                        os.path.join(workdir, "config.json"), "; ".join(changes.values()))  # fmt: skip


def _changes_from_the_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """{key: "key: stored -> now"} of `configlib.resume_changes` against the workdir's config.json ({} if none)."""
    path = os.path.join(workdir, "config.json")
    if not files.gfile().exists(path):
        return {}
    with files.gfile().GFile(path) as f:
        changes = configlib.resume_changes(f.read(), config)
    return {key: f"{key}: {stored!r} -> {now!r}" for key, (stored, now) in changes.items()}


def _restore_latest(config, mesh, manager, target: dict, *, set_aside: bool = True):
    """`checkpoint.restore_latest` into `target`; a checkpoint of the other `mesh.fsdp` layout is converted.

    The layouts differ in the Adam state only (raveled per module, or trees: `optim.Optimizer`), so a
    run can switch FSDP on or off between restarts. Any other mismatch stops with the arrays that differ.
    """
    try:
        return checkpoint.restore_latest(manager, target, set_aside=set_aside)
    except checkpoint.CheckpointMismatchError as mismatch:
        other_config = config.copy_and_resolve_references()
        other_config.mesh.fsdp = not config.mesh.fsdp
        other = build(other_config, mesh)
        other_target = _abstract_items(other.abstract_state, other.shardings, mesh)
        try:
            checkpoint.check_compatible(manager, mismatch.step, other_target)
        except checkpoint.CheckpointMismatchError:
            raise mismatch from None
    step, items = checkpoint.restore_latest(manager, other_target, set_aside=set_aside)
    logging.warning(
        "Checkpoint step %d was saved with config.mesh.fsdp=%s; this run has config.mesh.fsdp=%s: converting its Adam "
        "state to this layout.", step, other_config.mesh.fsdp, config.mesh.fsdp,
    )  # fmt: skip

    def relayout(items):  # gathered first: raveling or splitting an array sharded along `data` needs it whole
        opt_state = jax.tree.map(lambda x: jax.reshard(x, parallel.replicated(mesh)), items["opt_state"])
        return dict(items, opt_state=optim.relayout_opt_state(opt_state, target["opt_state"]))

    return step, jax.jit(relayout, out_shardings=jax.tree.map(lambda x: x.sharding, target))(items)


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
    if jax.process_index() == 0:
        files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


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
        out["train/window_steps"] = self.steps
        return out


def _write_window(writer, step: int, averager: "_MetricAverager", state, *, flush: bool = False) -> None:
    """Writes the train metrics of the steps since the last window (if any) at `step`.

    Also called where a run stops between two log steps (SIGTERM, too many skipped steps): those steps were once
    dropped from the metrics, and the resumed run's first window then averaged fewer steps than its neighbours
    without saying so. `train/window_steps` says how many steps each record averages.
    """
    if averager.steps:
        writer.write_scalars(step, averager.result() | {"train/skipped_steps": int(state.skipped_steps)})
    if flush:  # the run stops here
        writer.flush()


class _SkipWatch:
    """The longest run of consecutive skipped steps since the last check, kept on device (no host sync per step),
    read every `every` steps: the run stops when it reached `limit`.

    Reading only the count at the check points missed runs that began and ended between two of them (limit 50,
    checked every 50 steps: skips at steps 60-109 and a good step 110 read 41 at step 100 and 0 at step 150).
    """

    def __init__(self, limit: int, every: int):
        self.limit, self.every, self.longest = limit, every, None

    def add(self, consecutive_skips: jax.Array) -> None:
        # Always a new array: the state's own is donated to the next step (holding it gave "Array has been deleted").
        self.longest = jnp.maximum(0 if self.longest is None else self.longest, consecutive_skips)

    def reached(self, step: int) -> int | None:
        """At a check step: the longest run since the last check if it reached the limit, else None."""
        if step % self.every or self.longest is None:
            return None
        longest, self.longest = int(self.longest), None
        return longest if longest >= self.limit else None


def _evaluators(run: Run, writer):
    """The evaluators of config.evals; those with every_steps = -1 are switched off."""
    return [
        evaluators.build(name, spec, task=run.task, config=run.config, workdir=run.workdir, mesh=run.mesh, writer=writer)
        for name, spec in run.config.evals.items()
        if evaluators.every_steps(spec, run.config.eval_every_steps) != -1
    ]


def _run_evals(run: Run, evals, state, step: int) -> dict[str, float]:
    """Each evaluator on the weights config.eval_use_ema names, or on each of its own `weights` ("ema", "raw");
    the metrics of weights other than config.eval_use_ema's get the suffix _ema / _raw."""
    default = "ema" if run.config.eval_use_ema else "raw"
    out = {}
    for ev in evals:
        for weights in getattr(ev, "weights", None) or (default,):
            start = time.perf_counter()
            params = state.ema_params if weights == "ema" else state.params
            suffix = "" if weights == default else f"_{weights}"
            out.update({name + suffix: value for name, value in ev.run(params, step)})
            logging.info("Evaluator %s (%s weights) took %.1f s.", ev.name, weights, time.perf_counter() - start)
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
    """Trains `config.num_train_steps` steps (resuming if workdir has checkpoints) and runs the evaluators.

    SIGTERM (preemption) or SIGINT (Ctrl-C) stops the run after the current step with a checkpoint of that step
    and raises `Interrupted`; the same command resumes from it.
    """
    # The lock first: the writable checkpoint manager that setup opens deletes the unfinished saves it finds.
    with run_lock.hold(workdir, primary=jax.process_index() == 0), StopSignals() as stop:
        return _train(config, workdir, stop)


def _train(config: ml_collections.ConfigDict, workdir: str, stop: "StopSignals") -> train_state.TrainState:
    from clu import periodic_actions

    from lzn_jax import writers

    run = _phase("Setting up the mesh, model, state and checkpoints", lambda: setup(config, workdir))
    _write_config(config, workdir)
    _write_parameter_table(run)
    dropped = writers.drop_records_after(workdir, run.start_step)
    if dropped:
        logging.info("Dropped %d metric record(s) after step %d from metrics.jsonl: this run logs them again.", dropped,
                     run.start_step)  # fmt: skip
    writer = writers.create(workdir)
    batches = data.train_iterator(
        config.data, batch_size=config.batch_size, seed=config.seed, start_step=run.start_step,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    evals = _evaluators(run, writer)
    if run.start_step >= config.num_train_steps:
        logging.warning(
            "The newest checkpoint is at step %d and num_train_steps=%d: nothing to train. --mode=eval evaluates it; "
            "a larger --config.num_train_steps trains on.", run.start_step, config.num_train_steps,
        )  # fmt: skip
    report = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer)
    skips = _SkipWatch(config.max_consecutive_skips, every=min(config.log_every_steps, config.max_consecutive_skips))
    state, averager, step_fn = run.state, _MetricAverager(), None  # step_fn: compiled for the first batch
    with jax.set_mesh(run.mesh), _saves_completed(run.manager):
        for step in range(run.start_step + 1, config.num_train_steps + 1):
            batch = parallel.global_batch(next(batches), run.mesh)
            if step_fn is None:
                step_fn = _compiled_train_step(run, state, batch)
            state, metrics = step_fn(state, batch)
            averager.add(metrics)
            skips.add(state.consecutive_skips)
            report(step)
            longest = skips.reached(step)
            if longest is not None:
                _save(run, state, step)  # skipped steps change nothing: this is the last good state
                _write_window(writer, step, averager, state, flush=True)
                raise TooManySkippedSteps(
                    f"{longest} consecutive steps had a non-finite loss or gradient (by step "
                    f"{step}); the last good state is saved in {run.manager.directory}. Lower the learning rates "
                    "or check the data."
                )
            final = step == config.num_train_steps
            if step % config.log_every_steps == 0 or final:
                _write_window(writer, step, averager, state)
                averager = _MetricAverager()
            # Saved, and the save committed, before the evaluations: one that fails, or a preemption during a long
            # one (FID), loses no training; a run resumed from this step evaluates at the next due step (or run
            # --mode=eval). Also a step that is evaluated but not a checkpoint step (repr_imagenet probes every
            # 1000 steps and checkpoints every 2000): a preemption during its probe lost up to 1000 steps.
            # (Left writing in the background during a minutes-long evaluation, Orbax's commit of the step failed:
            # "Checkpoint directory does not exist: .../2.orbax-checkpoint-tmp/ema_params...".)
            due = [e for e in evals if final or (e.every_steps > 0 and step % e.every_steps == 0)]
            if step % config.checkpoint_every_steps == 0 or final or due:
                _save(run, state, step)
            if due:
                run.manager.wait_until_finished()
                writer.write_scalars(step, _run_evals(run, due, state, step))
            if not final and stop.reached(run.manager, step):
                _save(run, state, step)
                _write_window(writer, step, averager, state, flush=True)  # the steps since the last log line
                raise Interrupted(stop.message(step, run.manager.directory), stop.signal_number or signal.SIGTERM)
    writer.flush()
    return state


class Interrupted(RuntimeError):
    """The run stopped on SIGTERM/SIGINT after saving a checkpoint; `exit_code` is 128 + the signal's number."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step; a second one exits at once.

    A preemption notice (SIGTERM from Cloud TPU, GKE, SLURM) or Ctrl-C must not lose the steps since the last
    checkpoint, and must not be swallowed: a KeyboardInterrupt raised inside a compile or a gc callback is
    printed as "Exception ignored" and training runs on. A flag is checked between steps instead.

    With several processes, every host must save at the same step, and a flag set on one host is not seen by
    the others. SIGTERM is then left to JAX's preemption service (`jax.distributed` starts it and owns the
    signal), which agrees on one step for all hosts: `CheckpointManager.reached_preemption`
    (multihost_utils.reached_preemption_sync_point), asked every step. Ctrl-C keeps its default there.
    """

    def __init__(self):
        self.signal_number = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        # Handlers can only be set from the main thread (a notebook or test may train from another one).
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.signal_number is not None:
            print(f"{name} again: exiting at once, without a checkpoint of the current step.", file=sys.stderr, flush=True)
            os._exit(128 + number)
        self.signal_number = number
        logging.warning("%s received: stopping after the current step with a checkpoint (send it again to exit at "
                        "once).", name)  # fmt: skip

    def reached(self, manager, step: int) -> bool:
        """Whether to stop after `step`: on a local signal, or at the step every host agreed on after a SIGTERM."""
        if jax.process_count() > 1:
            return manager.reached_preemption(step)
        return self.signal_number is not None

    def message(self, step: int, directory) -> str:
        name = signal.Signals(self.signal_number).name if self.signal_number else "preemption notice"
        return (f"Stopped by {name} after step {step}, saved to {directory}; run the same command again to resume "
                f"from step {step}.")  # fmt: skip


def _phase(what: str, fn):
    """Runs fn() between two log lines, "<what> …" and "<what>: done in X s"."""
    logging.info("%s …", what)
    start = time.perf_counter()
    result = fn()
    logging.info("%s: done in %.1f s.", what, time.perf_counter() - start)
    return result


def _compiled_train_step(run: Run, state, batch):
    """The train step compiled ahead of time for `batch`'s shapes, so the log shows the compile as its own phase."""
    step_fn = train_state.make_train_step(run.task, run.optimizer, run.mesh, run.shardings)
    return _phase("Compiling the train step", lambda: step_fn.lower(state, batch).compile())


def _write_parameter_table(run: Run) -> None:
    """The per-array parameter table goes to workdir/parameters.txt; the log gets one line of totals."""
    params = run.state.params
    count = parameter_overview.count_parameters(params)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
    path = os.path.join(run.workdir, "parameters.txt")
    if jax.process_index() == 0:
        files.write_text(path, parameter_overview.get_parameter_overview(params, include_stats=False) + "\n")
    per_module = ", ".join(f"{m} {parameter_overview.count_parameters(p):,}" for m, p in params.items())
    logging.info("Parameters: %s (%.1f MiB; %s); the table is in %s.", f"{count:,}", size / 2**20, per_module, path)


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

    enabled = [n for n, spec in config.evals.items() if evaluators.every_steps(spec, config.eval_every_steps) != -1]
    if not enabled:
        raise ValueError(f"--mode=eval: every evaluator of config.evals ({sorted(config.evals)}) is switched off "
                         "(every_steps=-1); switch one on, e.g. --config.evals.<name>.every_steps=0.")  # fmt: skip
    has_checkpoints = bool(checkpoint.manager(os.path.join(workdir, "checkpoints"), read_only=True).all_steps())
    if not config.checkpoint.path and not has_checkpoints:
        raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints and no config.checkpoint.path: nothing to evaluate.")
    if config.checkpoint.path and has_checkpoints:  # which one? the workdir's was evaluated, silently
        raise ValueError(f"--mode=eval with config.checkpoint.path={config.checkpoint.path!r} and a --workdir that has "
                         f"checkpoints of its own ({workdir}/checkpoints): evaluate checkpoint.path in a new --workdir, "
                         "or leave checkpoint.path out to evaluate the workdir's newest checkpoint.")  # fmt: skip
    _warn_eval_changes(config, workdir)
    run = setup(config, workdir, resuming=False)
    writer = writers.create(workdir)
    with jax.set_mesh(run.mesh):
        results = _run_evals(run, _evaluators(run, writer), run.state, run.start_step)
    writer.write_scalars(run.start_step, results)
    writer.flush()
    if jax.process_index() == 0:
        files.write_text(os.path.join(workdir, f"eval_{run.start_step}.json"), json.dumps(results, indent=2))
    return results
