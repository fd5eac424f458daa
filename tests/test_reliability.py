"""Reliability end to end: SIGKILL and resume, damaged and foreign checkpoints, non-finite steps, determinism and
the errors bad input gets before any compute.

The runs go through `python -m lzn_jax.main` in subprocesses, on a tiny digits config over 2 forced CPU devices
(batch rows and the zoning kernel sharded as on a pod). They share one persistent compilation cache: the reference
run compiles, every later process loads its executables and costs little more than its imports.
"""

import logging
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from support import load_config, saved_items, subprocess_env

from lzn_jax import checkpoint, configlib, files, parallel, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 24, 4
SETTINGS = {
    "num_train_steps": STEPS,
    "checkpoint_every_steps": CHECKPOINT_EVERY,
    "log_every_steps": CHECKPOINT_EVERY,  # windows aligned with checkpoints: a resumed window is a whole window
    "keep_checkpoints": 3,
    "data.image_size": 8,
    "data.augmentation": "affine",  # per-example augmentation draws must resume too
    "encoder.nf": 8,
    "encoder.ch_mult": (1,),
    "encoder.dropout": 0.1,  # dropout: the step's RNG stream must resume
    "decoder.nf": 8,
    "decoder.ch_mult": (1,),
    "decoder.dropout": 0.1,
    "zoning.num_steps": 3,
    "zoning.label_num_steps": 2,
    "optim.warmup_steps": 10,  # the learning rate is still rising where the runs are killed
}
TIMING = ("uptime", "steps_per_sec")


def cli(workdir, **changes) -> list[str]:
    values = {**SETTINGS, **changes}
    flags = [f"--config.{key}={v if isinstance(v, str) else repr(v)}" for key, v in values.items()]
    return ["--config=configs/digits_joint.py:runlocal", f"--workdir={workdir}", *flags]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return subprocess_env(devices=2, cache_dir=tmp_path_factory.mktemp("jax_cache"))


class Process:
    """One `python -m lzn_jax.main` (or `python -c script`) run, its output in a file (a pipe could fill up)."""

    def __init__(self, env, args, log_path, *, script=None):
        self.log_path = log_path
        command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "lzn_jax.main"]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(command + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return pathlib.Path(self.log_path).read_text()

    def wait(self, timeout=600) -> int:
        return self.proc.wait(timeout)

    def finish(self):
        assert self.wait() == 0, self.output()[-4000:]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"

    def wait_until(self, condition, what, timeout=600):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended before {what}:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"timed out waiting until {what}")
            time.sleep(0.002)


def entries(workdir) -> list[str]:
    folder = pathlib.Path(workdir) / "checkpoints"
    return os.listdir(folder) if folder.is_dir() else []


def complete_steps(workdir) -> list[int]:
    return sorted(int(name) for name in entries(workdir) if name.isdigit())


def partial_saves(workdir) -> list[str]:
    """Checkpoints being written: Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when complete."""
    return [name for name in entries(workdir) if not name.isdigit()]



def assert_same_arrays(a, b, what):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}{jax.tree_util.keystr(path)}")


def train_records(workdir) -> dict[int, dict]:
    """{step: every logged value but the timings}; a resumed run logs again the steps after its checkpoint, and the
    last record wins."""
    out = {}
    for record in files.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        out.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k not in TIMING})
    return out


def resumed_at(output: str) -> int:
    line = next(line for line in output.splitlines() if "Resumed from" in line)
    return int(line.split(" at step ")[1].split()[0])


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """An uninterrupted run: the ground truth, and the run that fills the compilation cache."""
    workdir = tmp_path_factory.mktemp("runs") / "reference"
    Process(env, cli(workdir), f"{workdir}.log").finish()
    assert complete_steps(workdir) == [16, 20, 24]
    return workdir


@pytest.mark.slow
def test_sigkill_at_any_moment_then_the_same_command_ends_exactly_like_an_uninterrupted_run(env, reference, tmp_path):
    workdir = tmp_path / "killed"
    # 1. Killed while a checkpoint after the first one is half-written: stop the process as soon as a save is in
    #    flight, and kill it only if that save is still unfinished (else let it run to the next save).
    run = Process(env, cli(workdir), tmp_path / "run1.log")
    while True:
        run.wait_until(lambda: complete_steps(workdir) and partial_saves(workdir), "a second checkpoint was written")
        run.proc.send_signal(signal.SIGSTOP)
        if partial_saves(workdir):
            run.kill()
            break
        run.proc.send_signal(signal.SIGCONT)
    half_written, last_complete = partial_saves(workdir), complete_steps(workdir)[-1]
    assert half_written and last_complete < STEPS

    # 2. The same command resumes from the last complete checkpoint (the half-written one is never read) and is
    #    killed again at a random moment after its own first checkpoint, this time between saves or not.
    run = Process(env, cli(workdir), tmp_path / "run2.log")
    run.wait_until(lambda: complete_steps(workdir)[-1] > last_complete, "the resumed run saved a checkpoint")
    time.sleep(random.Random(7).uniform(0.0, 0.3))
    run.kill()
    assert resumed_at(run.output()) == last_complete
    second_resume = complete_steps(workdir)[-1]

    # 3. Again the same command: it ends where the uninterrupted run ended, bit for bit.
    run = Process(env, cli(workdir), tmp_path / "run3.log")
    run.finish()
    assert resumed_at(run.output()) == second_resume
    assert not partial_saves(workdir), "the half-written checkpoint directory was not cleaned up"
    expected, got = saved_items(reference, STEPS), saved_items(workdir, STEPS)
    for item in checkpoint.ITEMS:  # params, EMA, Adam state, step/RNG key/EMA counts/skip counters
        assert_same_arrays(got[item], expected[item], item)
    expected_metrics, got_metrics = train_records(reference), train_records(workdir)
    assert sorted(got_metrics) == list(range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY))
    assert abs(got_metrics[STEPS]["train/loss"] - expected_metrics[STEPS]["train/loss"]) <= 1e-6
    # Every logged value of every window, before and after each resume. (This also holds the determinism check
    # that once had its own uninterrupted second run: a run whose draws or reductions varied from one process to
    # the next fails here, and in the SIGINT/SIGTERM test, as surely as a resume that lost state.)
    assert got_metrics == expected_metrics
    # Each step once: the steps a killed run had logged past its checkpoint were in the file twice after resuming.
    logged = [r["step"] for r in files.read_jsonl(str(workdir / "metrics.jsonl")) if "train/loss" in r]
    assert logged == sorted(set(logged)), logged


def stop_while_compiling(env, workdir, log_path, signal_number) -> tuple[int, str]:
    """Starts the command, sends `signal_number` once it logs the train step's compile; (step saved, output)."""
    run = Process(env, cli(workdir), log_path)
    run.wait_until(lambda: "Compiling the train step" in run.output(), "the train step was being compiled")
    run.proc.send_signal(signal_number)
    assert run.wait() == 128 + signal_number, run.output()[-4000:]
    output = run.output()
    stopped = complete_steps(workdir)[-1]
    name = signal.Signals(signal_number).name
    assert f"Stopped by {name} after step {stopped}, saved to " in output, output[-4000:]
    assert f"run the same command again to resume from step {stopped}" in output
    assert "Traceback" not in output and "Exception ignored" not in output
    assert int(saved_items(workdir, stopped)["meta"]["step"]) == stopped
    return stopped, output


@pytest.mark.slow
def test_sigint_during_the_first_compile_and_sigterm_stop_at_a_checkpoint_and_resume_bit_identically(
    env, reference, tmp_path
):
    """Ctrl-C during the first compile was swallowed ("Exception ignored in _xla_gc_callback") and training ran on;
    SIGTERM (a preemption notice) exited without a checkpoint, and the next run started again at step 0."""
    workdir = tmp_path / "interrupted"
    first, _ = stop_while_compiling(env, workdir, tmp_path / "run1.log", signal.SIGINT)
    assert 1 <= first < STEPS
    second, output = stop_while_compiling(env, workdir, tmp_path / "run2.log", signal.SIGTERM)
    assert resumed_at(output) == first and first < second < STEPS
    run = Process(env, cli(workdir), tmp_path / "run3.log")
    run.finish()
    assert resumed_at(run.output()) == second
    expected, got = saved_items(reference, STEPS), saved_items(workdir, STEPS)
    for item in checkpoint.ITEMS:
        assert_same_arrays(got[item], expected[item], item)
    # Every step's metrics are logged once: a stop between two log steps writes the window so far (once dropped,
    # and the resumed run's first window then averaged fewer steps than it said).
    windows = [r for r in files.read_jsonl(str(workdir / "metrics.jsonl")) if "train/window_steps" in r]
    assert sum(r["train/window_steps"] for r in windows) == STEPS
    assert {first, second} - {r["step"] for r in windows} <= set(range(0, STEPS + 1, CHECKPOINT_EVERY))


@pytest.mark.slow
def test_the_log_has_one_line_per_phase_and_the_parameter_table_goes_to_the_workdir(reference):
    """The first minutes once showed a ~360-line parameter table and then nothing during a long compile."""
    output = pathlib.Path(f"{reference}.log").read_text()
    for phase in ("Setting up the mesh, model, state and checkpoints", "Compiling the train step"):
        assert f"{phase} …" in output and re.search(f"{phase}: done in [0-9.]+ s", output), phase
    assert re.search(r"Parameters: [0-9,]+ \([0-9.]+ MiB; [a-z_]+ [0-9,]+.*\); the table is in .*parameters.txt", output)
    table = (reference / "parameters.txt").read_text()
    assert "| Name" in table and "encoder/" in table
    assert "| Name" not in output and "dataset_info.json" not in output


@pytest.mark.slow
def test_main_keeps_a_compilation_cache_in_the_workdir_that_a_resumed_run_loads(env, reference, tmp_path):
    """Without JAX_COMPILATION_CACHE_DIR, `main` keeps JAX's persistent compilation cache in <workdir>/jax_cache, so
    a run resumed after a preemption loads its train step instead of compiling it again (16 to 79 minutes of one core
    for the paper configs' steps on the TPU compiler, docs/scaling.md); before, every restart compiled everything
    again. The cache is touched only after setup has validated the config: a refused run leaves none. With
    JAX_COMPILATION_CACHE_DIR set (as for the other runs here) the workdir holds no cache.
    """
    own = {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # keeps env's min compile time of 0 s
    own["JAX_LOG_COMPILES"] = "1"  # logs each persistent-cache hit as a warning
    refused = tmp_path / "refused"
    run = Process(own, cli(refused, batch_size=3), tmp_path / "refused.log")  # 2 devices: refused in setup
    assert run.wait() == 2 and "is not divisible by the 2 devices" in run.output()
    assert not (refused / "jax_cache").exists()
    workdir, hit = tmp_path / "cached", "Persistent compilation cache hit for 'jit_step'"
    first = Process(own, cli(workdir, num_train_steps=CHECKPOINT_EVERY), tmp_path / "first.log")
    first.finish()
    assert any((workdir / "jax_cache").iterdir()) and hit not in first.output()
    second = Process(own, cli(workdir, num_train_steps=2 * CHECKPOINT_EVERY), tmp_path / "second.log")
    second.finish()
    assert resumed_at(second.output()) == CHECKPOINT_EVERY and hit in second.output()
    assert not (reference / "jax_cache").exists()


POISONED_RUN = """
import numpy as np
from lzn_jax import data, main

POISONED = {3} | set(range(7, 100))  # one lone bad step, then bad data for good
real_train_iterator = data.train_iterator


def poisoned(data_cfg, *, start_step=0, **kwargs):
    for step, batch in enumerate(real_train_iterator(data_cfg, start_step=start_step, **kwargs), start_step + 1):
        if step in POISONED:  # one pixel of the last example: a row of the second device
            image = batch["image"].copy()
            image[-1, 0, 0, 0] = np.nan
            batch = dict(batch, image=image)
        yield batch


data.train_iterator = poisoned
main.run()
"""


@pytest.mark.slow
def test_non_finite_steps_are_skipped_everywhere_and_too_many_in_a_row_stop_with_the_last_good_state(
    env, reference, tmp_path
):
    workdir = tmp_path / "poisoned"
    args = cli(workdir, max_consecutive_skips=2, checkpoint_every_steps=6)
    run = Process(env, args, tmp_path / "poisoned.log", script=POISONED_RUN)
    assert run.wait() == 2, run.output()[-4000:]
    output = run.output()
    assert "error: 2 consecutive steps had a non-finite loss or gradient (by step 8)" in output
    assert "Traceback" not in output
    # The lone bad step 3 was skipped, counted, and training went on with finite metrics.
    window = train_records(workdir)[4]
    assert window["train/skipped_steps"] == 1 and window["train/skipped_in_window"] == 1
    assert np.isfinite(window["train/loss"])
    # Steps 7 and 8 changed nothing: the checkpoint written at the stop holds the state of step 6.
    assert complete_steps(workdir) == [6, 8]
    good, stopped = saved_items(workdir, 6), saved_items(workdir, 8)
    for item in ("params", "ema_params", "opt_state"):
        assert_same_arrays(stopped[item], good[item], item)
    meta = stopped["meta"]
    assert int(meta["step"]) == 8 and int(meta["skipped_steps"]) == 3 and int(meta["consecutive_skips"]) == 2
    assert all(int(count) == 5 for count in meta["ema_counts"].values())  # EMA updated on steps 1, 2, 4, 5, 6


def tiny_config(name="digits_joint", **changes):
    """The config the CLI flags above build, for the in-process checks."""
    return configlib.override(load_config(name, "runlocal"), **{**SETTINGS, **changes})


def copy_of(workdir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    return copy


@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_is_named_and_the_previous_one_restored(reference, tmp_path, caplog):
    workdir = copy_of(reference, tmp_path)
    for path in (workdir / "checkpoints" / str(STEPS) / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING):
        run = train.setup(tiny_config(), str(workdir))
    assert run.start_step == STEPS - CHECKPOINT_EVERY
    assert any(str(workdir / "checkpoints" / str(STEPS)) in r.getMessage() for r in caplog.records), caplog.text
    # Set aside, so that this run saves step STEPS again (tests/test_checkpoint.py).
    assert (workdir / "checkpoints" / f"{STEPS}.damaged").is_dir() and STEPS not in run.manager.all_steps()
    previous = saved_items(reference, STEPS - CHECKPOINT_EVERY)
    assert_same_arrays(jax.tree.map(np.asarray, run.state.params), previous["params"], "params")


@pytest.mark.slow
def test_resuming_with_settings_that_change_what_is_trained_is_refused_before_restoring(reference, tmp_path):
    """The bug: only array shapes were compared, so resuming a workdir with another seed, learning rate or dataset
    (or another task whose arrays happen to match) went on silently, mixing two experiments under one name."""
    workdir = copy_of(reference, tmp_path)
    with pytest.raises(train.ResumeConfigError) as info:
        train.setup(tiny_config(seed=1, **{"optim.lr.encoder": 3e-4, "num_train_steps": 99}), str(workdir))
    message = str(info.value)
    assert "seed: 0 -> 1" in message and "optim.lr.encoder: " in message and "num_train_steps" not in message
    assert f"--config.checkpoint.path={workdir / 'checkpoints'}" in message
    assert "--config.checkpoint.allow_changes=optim.lr.encoder --config.checkpoint.allow_changes=seed" in message
    run = train.setup(tiny_config(seed=1, **{"checkpoint.allow_changes": ("seed", "optim.lr")}), str(workdir))
    assert run.start_step == STEPS  # changed on purpose: resumed


@pytest.mark.slow
def test_an_evaluation_beside_a_live_run_leaves_its_checkpoints_alone(reference, tmp_path, caplog):
    """--mode=eval opened the checkpoints for writing, and a writer deletes every `*.orbax-checkpoint-tmp*` it
    finds: an evaluation started while the run was saving deleted that save, and the training run died ("Save
    failed: 2/42 params are missing .zarray"). And with config.checkpoint.path set on such a workdir it evaluated
    the workdir's own checkpoint instead, silently."""
    workdir = copy_of(reference, tmp_path)
    in_flight = workdir / "checkpoints" / f"{STEPS + 4}.orbax-checkpoint-tmp-1234"  # a save being written
    (in_flight / "params").mkdir(parents=True)
    config = tiny_config(**{"evals": ml_collections.ConfigDict(
        {"class_accuracy": {"splits": ("test",), "stds": (0.0,), "every_steps": 0}})})  # fmt: skip
    with caplog.at_level(logging.WARNING):
        results = train.evaluate(configlib.override(config, **{"zoning.prior_scale": 0.5}), str(workdir))
    assert set(results) >= {"eval/accuracy"} and in_flight.is_dir()
    # A setting other than the run's is named (only array shapes must match an evaluation's checkpoint).
    assert "--mode=eval with 1 setting(s) other than the run's" in caplog.text
    assert "zoning.prior_scale: 1.0 -> 0.5" in caplog.text
    config.checkpoint.path = str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="--mode=eval with config.checkpoint.path=.* has checkpoints of its own"):
        train.evaluate(config, str(workdir))


@pytest.mark.slow
def test_a_second_run_in_a_live_runs_workdir_stops_before_touching_it(env, reference, tmp_path):
    """The same command started twice (a second terminal, a scheduler's requeue while the job still runs): the
    second run's checkpoint manager deleted the save the first had in flight, as an evaluation's did (above), and
    both wrote the same steps' metrics. Now the second stops at once, naming the first, which trains on."""
    workdir = tmp_path / "shared"
    first = Process(env, cli(workdir, num_train_steps=10**6), tmp_path / "first.log")
    try:
        first.wait_until(lambda: complete_steps(workdir), "the first run saved a checkpoint")
        second = Process(env, cli(workdir), tmp_path / "second.log")
        assert second.wait() == 2, second.output()[-4000:]
        assert f"error: Another run is training in this workdir: pid {first.proc.pid} on host" in second.output()
        assert "Setting up" not in second.output()
        saved = complete_steps(workdir)[-1]
        first.wait_until(lambda: complete_steps(workdir)[-1] > saved, "the first run saved again")
    finally:
        first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == 128 + signal.SIGTERM, first.output()[-4000:]
    assert "Save failed" not in first.output() and "Traceback" not in first.output()
    assert not (workdir / "run.lock").exists()


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_refused_with_the_arrays_that_differ(reference, tmp_path):
    workdir = copy_of(reference, tmp_path)
    (workdir / "config.json").unlink()  # no settings to compare (e.g. a checkpoint copied alone): the arrays are
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
        train.setup(tiny_config(latent_dim=16), str(workdir))
    message = str(info.value)
    assert "params/label_anchors/anchors: shape (10, 32) in the checkpoint, (10, 16) in the model" in message
    assert "ema_params/encoder/" in message and "Use the config the checkpoint was trained with" in message


@pytest.mark.slow
def test_a_misspelled_override_names_the_nearest_key_without_a_traceback(env, tmp_path):
    workdir = tmp_path / "never_written"
    run = Process(env, cli(workdir) + ["--config.batch_sizee=3"], tmp_path / "typo.log")
    assert run.wait() == 2
    output = run.output()
    assert "error: --config.batch_sizee: Unknown config key 'batch_sizee' in config. Did you mean 'batch_size'?" in output
    assert "Traceback" not in output and not workdir.exists()
    # A misspelled config argument: one line too (it was absl's "FATAL Flags parsing error" around a traceback).
    args = [a.replace(":runlocal", ":runlokal") for a in cli(workdir)]
    run = Process(env, args, tmp_path / "arg.log")
    assert run.wait() == 2
    output = run.output()
    assert "error: --config=configs/digits_joint.py:runlokal: Unknown config argument 'runlokal'" in output
    assert "Traceback" not in output and not workdir.exists()
    # A value that does not parse as its key's type: absl's parse-again fallback said only "The flag
    # 'config.batch_size' is defined twice".
    run = Process(env, cli(workdir) + ["--config.batch_size=abc"], tmp_path / "value.log")
    assert run.wait() == 2
    output = run.output()
    assert "error: --config.batch_size='abc' is not a valid int (config.batch_size is 8;" in output, output[-3000:]
    assert "defined twice" not in output and "Traceback" not in output and not workdir.exists()


def config_with(name, **changes):
    return configlib.override(load_config(name), **changes)


def replaced_section(name, section, **changes):
    config = load_config(name)
    config[section] = ml_collections.ConfigDict({**config[section].to_dict(), **changes})
    return config


@pytest.mark.parametrize(
    "config, message",
    [
        # Architectures that cannot take the image size (digits NCSN++: ch_mult (1, 2, 2), attention at 8 px).
        (lambda: config_with("digits_joint", **{"data.image_size": 18}), "must be a multiple of 4"),
        (lambda: config_with("digits_joint", **{"data.image_size": 4}), "never has resolution(s) [8]"),
        (lambda: config_with("digits_repr", **{"data.image_size": 4}), "too small for config.encoder"),
        (lambda: config_with("repr_imagenet", **{"data.image_size": 16}), "or small_images=True"),
        # What ConfigDict's own type safety does not see: sections replaced wholesale.
        (lambda: replaced_section("digits_joint", "rf", euler_steps=10.5), "config.rf.euler_steps=10.5 is a float"),
        (lambda: replaced_section("digits_joint", "zoning", numsteps=3), "Did you mean 'num_steps'"),
        # A module field of the wrong kind (`--config.encoder.ch_mult=abc` parses as a tuple of strings): once
        # "Shapes must be 1D sequences of concrete values of integer type" from inside init.
        (lambda: config_with("digits_joint", **{"encoder.ch_mult": ("abc",)}),
         "NCSNPPEncoder.ch_mult=('abc',) is not a tuple[int, ...]"),
    ],
)
def test_bad_configs_fail_in_check_before_anything_is_built(config, message):
    with pytest.raises(ValueError) as info:
        configlib.check(config())
    assert message in str(info.value)


def test_a_batch_that_does_not_split_over_the_devices_is_refused():
    mesh = jax.sharding.AbstractMesh((4,), (parallel.DATA,))
    with pytest.raises(ValueError, match=r"config.batch_size=6 is not divisible by the 4 devices .* multiple of 4"):
        parallel.check_batch_size(6, mesh)


def test_an_unwritable_workdir_is_refused_before_compute(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="--workdir=.* is not writable"):
        train.check_workdir(str(blocker / "run"))


def test_a_dataset_smaller_than_one_batch_is_refused_before_compute(tmp_path):
    """It was refused only when the input pipeline started, after the state had been built and initialised."""
    from PIL import Image

    for i in range(7):
        os.makedirs(tmp_path / "images", exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"img_{i}.png")
    config = config_with("digits_gen", batch_size=8, **{"data.source": "image_folder", "data.data_dir":
                         str(tmp_path / "images"), "data.train_split": "", "data.test_split": "", "num_classes": 1})  # fmt: skip
    with pytest.raises(ValueError, match="batch_size=8 exceeds the 7 train examples"):
        train.setup(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"source": "image_folder", "data_dir": "/nonexistent/afhq"}, "does not exist. Download the images"),
        ({"source": "tfds", "name": "cifar10", "num_channels": 3}, "`tfds build cifar10 --data_dir="),
    ],
)
def test_missing_data_says_what_to_download_where_before_compute(tmp_path, data, message):
    if data["source"] == "tfds":
        data = dict(data, data_dir=str(tmp_path / "tfds"))
    config = config_with("digits_joint", **{f"data.{k}": v for k, v in data.items()})
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        train.setup(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
