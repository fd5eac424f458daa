"""Two processes on localhost train like one: a real multi-process job through `python -m lzn_jax.main`.

Two `python -m lzn_jax.main` processes with 2 CPU devices each join one job through the launcher variables
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, read by `parallel.maybe_initialize_distributed`),
with cross-process CPU collectives over gloo (jax's default CPU collectives when jax.distributed is
initialised). They share one workdir, as hosts of a pod share a gs:// bucket. A single process with 4 CPU
devices runs the same config: the same (data=4) mesh, the same global batches (each host reads its half of
every batch), so every reduction and random draw is the same and the two jobs must agree to float rounding.

Case study 3 on a tiny digits model: the class weights of the label loss are counted over the global batch
(a psum across processes), the loss and metrics are means over all devices, gradients are all-reduced across
processes, and the final class-accuracy evaluation reads per-host eval rows and gathers predictions.
The three processes start together and share one persistent compilation cache directory.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from support import saved_items

from lzn_jax import checkpoint, files

pytestmark = pytest.mark.slow  # two training processes joined by jax.distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 2
SETTINGS = {
    "num_train_steps": STEPS,
    "log_every_steps": 1,
    "checkpoint_every_steps": STEPS,
    "data.image_size": 8,
    "latent_dim": 16,
    "encoder.nf": 8,
    "encoder.ch_mult": (1,),
    "decoder.nf": 8,
    "decoder.ch_mult": (1,),
    "zoning.num_steps": 3,
    "zoning.label_num_steps": 2,
    "evals.class_accuracy.every_steps": STEPS,
    "evals.class_accuracy.stds": (0.0,),
    "eval_batch_size": 120,  # the 360 test digits in 3 global batches of 60 rows per host
}
TIMEOUT_S = 600


def cli(workdir) -> list[str]:
    flags = [f"--config.{key}={v if isinstance(v, str) else repr(v)}" for key, v in SETTINGS.items()]
    return [sys.executable, "-m", "lzn_jax.main", "--config=configs/digits_joint.py:runlocal", f"--workdir={workdir}",
            *flags]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(env, workdir, log_path) -> subprocess.Popen:
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would block the process
        return subprocess.Popen(cli(workdir), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: dict, logs: dict) -> None:
    """Waits for every process; the first failure (or the timeout) kills the others, which would otherwise wait
    for their peer in a collective until the coordinator's own timeout."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs.values()):
            failed = [name for name, p in procs.items() if p.poll() not in (None, 0)]
            if failed:
                raise AssertionError(f"{failed[0]} failed:\n{logs[failed[0]].read_text()[-6000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {TIMEOUT_S} s")
            time.sleep(0.2)
        for name, p in procs.items():
            assert p.returncode == 0, f"{name} failed:\n{logs[name].read_text()[-6000:]}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process workdir, two-process workdir, {name: log path}) after all three runs ended."""
    tmp = tmp_path_factory.mktemp("distributed")
    base = dict(os.environ)
    base.update(
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]),
        TF_CPP_MIN_LOG_LEVEL="2",
        JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    for launcher_variable in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
        base.pop(launcher_variable, None)
    coordinator = f"127.0.0.1:{free_port()}"
    envs = {"single": dict(base, JAX_NUM_CPU_DEVICES="4")}
    for i in range(2):
        envs[f"process{i}"] = dict(base, JAX_NUM_CPU_DEVICES="2", JAX_COORDINATOR_ADDRESS=coordinator,
                                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))  # fmt: skip
    workdirs = {"single": tmp / "single", "process0": tmp / "pair", "process1": tmp / "pair"}
    logs = {name: tmp / f"{name}.log" for name in envs}
    procs = {}
    try:
        for name, env in envs.items():
            procs[name] = launch(env, workdirs[name], logs[name])
    finally:
        wait_all(procs, logs)
    return tmp / "single", tmp / "pair", logs


def records(workdir) -> list[dict]:
    return files.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def metrics_by_step(workdir, prefix) -> dict[int, dict]:
    out = {}
    for record in records(workdir):
        out.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k.startswith(prefix)})
    return {step: values for step, values in out.items() if values}



def test_the_processes_joined_one_job_through_the_launcher_variables(runs):
    _, _, logs = runs
    for i in range(2):
        text = logs[f"process{i}"].read_text()
        assert f"jax.distributed (coordinator variables): process {i} of 2" in text
        assert "2 process(es), 4 device(s)" in text
    assert "1 process(es), 4 device(s)" in logs["single"].read_text()


def test_two_processes_log_the_losses_and_metrics_of_one(runs):
    single, pair, _ = runs
    expected, got = metrics_by_step(single, "train/"), metrics_by_step(pair, "train/")
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    for step in expected:
        assert set(got[step]) == set(expected[step])
        for name, value in expected[step].items():
            assert got[step][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, name)
    assert expected[STEPS]["train/loss"] != expected[1]["train/loss"], "the steps must change the model"


def test_two_processes_evaluate_like_one(runs):
    """Class accuracy: latents zoned per global eval batch, class weights of that batch, predictions gathered.

    An eval batch is each host's contiguous share of the split (docs/scaling.md), so the two jobs zone slightly
    different sets of digits together: equal up to a tie or two, not bit for bit.
    """
    single, pair, _ = runs
    expected, got = metrics_by_step(single, "eval/")[STEPS], metrics_by_step(pair, "eval/")[STEPS]
    assert set(expected) == {"eval/accuracy", "eval/accuracy_with_class_weights"}
    assert got == pytest.approx(expected, abs=1.5 / 360)  # at most one of the 360 test digits on a tie


def test_only_process_0_writes_metrics_and_events(runs):
    single, pair, logs = runs
    assert len(records(pair)) == len(records(single)), "process 1 wrote metrics.jsonl records too"
    assert len(list(pair.glob("events.out.tfevents.*"))) == 1
    # Process 1 still reports its (identical) metrics to its own log.
    assert "train/loss=" in logs["process1"].read_text()


def test_the_checkpoint_is_complete_and_matches_the_single_process_one(runs):
    single, pair, _ = runs
    assert sorted(os.listdir(pair / "checkpoints")) == [str(STEPS)], "a missing or half-written checkpoint"
    expected, got = saved_items(single, STEPS), saved_items(pair, STEPS)
    for item in checkpoint.ITEMS:  # params, EMA, Adam state, step / RNG key / EMA counts / skip counters
        flat_expected = jax.tree_util.tree_flatten_with_path(expected[item])[0]
        flat_got = jax.tree.leaves(got[item])
        assert len(flat_got) == len(flat_expected), item
        for (path, want), have in zip(flat_expected, flat_got):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=f"{item}{jax.tree_util.keystr(path)}")
    assert int(got["meta"]["step"]) == STEPS


# api.load on each process of a two-process job (a pod's hosts in one inference job): each prints its labels.
_LOAD_ON_EACH_PROCESS = """
import sys
import jax, numpy as np
from lzn_jax import api, data, parallel
parallel.maybe_initialize_distributed()
lzn, params = api.load(sys.argv[1])
images, _ = data.load_arrays(lzn.config.data, "test")
print("labels", np.asarray(lzn.classify(params, images[:8], key=jax.random.key(0))).tolist(), flush=True)
"""


def test_every_process_of_a_job_loads_the_params_through_the_api(runs, tmp_path):
    """The bug: `api.load` without a mesh put the params on jax.devices()[0], a device of process 0 alone; every
    other process failed ("If the Array has no addressable shards ...") and process 0 then hung at shutdown."""
    single, pair, _ = runs
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2")  # fmt: skip
    logs = {f"process{i}": tmp_path / f"load{i}.log" for i in range(2)}
    procs = {}
    try:
        for i in range(2):
            with open(logs[f"process{i}"], "w") as log:
                procs[f"process{i}"] = subprocess.Popen(
                    [sys.executable, "-c", _LOAD_ON_EACH_PROCESS, str(pair)], cwd=ROOT,
                    env=dict(env, JAX_PROCESS_ID=str(i)), stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
    finally:
        wait_all(procs, logs)
    from lzn_jax import api, data

    lzn, params = api.load(str(pair))
    images, _ = data.load_arrays(lzn.config.data, "test")
    expected = f"labels {np.asarray(lzn.classify(params, images[:8], key=jax.random.key(0))).tolist()}"
    for name, log in logs.items():
        assert expected in log.read_text(), (name, expected, log.read_text()[-3000:])
