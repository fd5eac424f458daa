"""`--config.mesh.fsdp=True` through `python -m lzn_jax.main` on 8 CPU devices, for every composition (TASKS).

The bug: `train.setup` built the Adam state in the replicated layout (one raveled vector per module) while the
step and the shardings expected FSDP's trees, so every FSDP run crashed at its first step (`pytree structure
error ... tree['encoder']`); the FSDP tests built their state by a side door (`train_state.create`) and never
saw it. Here each task trains 2 steps, is restarted by the same command to 4 steps, in both layouts:
- FSDP gives the replicated run's losses and parameters (the layouts differ in where the state is stored and in
  the order of the gradient reductions: reduce-scatter instead of all-reduce), to rtol 1e-5 on the losses and
  2e-6 on the parameters;
- its checkpoints hold the FSDP layout (Adam moments as trees) and the restart resumes from them;
- a checkpoint of one layout resumed with the other is converted, and the run continues as if never switched.
The joint runs freeze their decoder and label anchors at step 2 (`support.FREEZE`), so every restart resumes at a
freeze and steps 3 and 4 update only the encoder, in both layouts.

Adam's eps is 0.1 as in tests/multidevice/test_train_sharded.py: with 1e-8 Adam divides float32 rounding noise
of zero-gradient biases by its own magnitude, which moves those biases by ±lr whatever the layout.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from support import EIGHT_DEVICE_JOINT, EIGHT_DEVICE_STEP, saved_items, subprocess_env

from lzn_jax import files

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMON = {**EIGHT_DEVICE_STEP, "log_every_steps": 1, "checkpoint_every_steps": 2}  # batch 16: 2 rows per device
# One basic block per stage (a ResNet-10) at base width 32: the layouts and the resume do not depend on depth.
RESNET_10 = {"encoder.depth": 18, "encoder.stage_blocks": (1, 1, 1, 1), "encoder.base_width": 32, "latent_dim": 64}
# task: (config file, its tiny overrides); evaluators are off in the runlocal configs. The joint run covers
# generation and classification (the NCSN++ encoder and decoder, the label anchors); the representation run the
# ResNet encoder and head. The SimCLR baseline (digits_simclr) is left out: its train state, and so its FSDP
# layout, is digits_repr's (the same param and Adam-state trees, shapes and dtypes); only its loss differs, and a
# loss runs the same code in both layouts. Its runs cost about 105 s of one xdist worker per suite.
TASKS = {
    "generation": ("digits_joint", EIGHT_DEVICE_JOINT),
    "representation": ("digits_repr", RESNET_10),
}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The runs share the suite's compilation cache (conftest.py): each program is compiled by the first run that
    needs it, and the replicated joint step also serves tests/multidevice/test_api_sharded.py."""
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp_path_factory.mktemp("jax_cache")
    return subprocess_env(devices=8, cache_dir=cache_dir)


def start(env, task, workdir, *, fsdp, steps) -> subprocess.Popen:
    """Starts `python -m lzn_jax.main` (train mode), its output in workdir.log."""
    name, overrides = TASKS[task]
    values = {**COMMON, **overrides, "mesh.fsdp": fsdp, "num_train_steps": steps}
    flags = [f"--config.{key}={value!r}" for key, value in values.items()]
    command = [sys.executable, "-m", "lzn_jax.main", f"--config=configs/{name}.py:runlocal", f"--workdir={workdir}"]
    with open(f"{workdir}.log", "w") as log:
        process = subprocess.Popen(command + flags, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = pathlib.Path(log.name)
    return process


def finish(process: subprocess.Popen) -> str:
    """Waits for a run and returns its output; fails the test if the run failed."""
    returncode = process.wait(timeout=2400)
    output = process.log.read_text()
    assert returncode == 0, output[-6000:]
    return output


def losses(workdir) -> dict[int, float]:
    """{step: train/loss} of metrics.jsonl (log_every_steps=1; a resumed run's records come after the first's)."""
    return {r["step"]: r["train/loss"] for r in files.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r}


def copy_at_step_2(source, workdir):
    """A copy of a 4-step run's workdir as it was at step 2: checkpoint 4 and the records after step 2 removed."""
    shutil.copytree(source, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    kept = [r for r in files.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["step"] <= 2]
    pathlib.Path(workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


@pytest.fixture(scope="module", params=sorted(TASKS))
def runs(request, env, tmp_path_factory):
    """(task, root, {layout: (workdir, output of its last run)}): 4 replicated steps; 2 FSDP steps, then the same
    command to 4 (a restart resuming at step 2). Independent runs go in parallel."""
    task, root = request.param, tmp_path_factory.mktemp(request.param)
    replicated = start(env, task, root / "replicated", fsdp=False, steps=4)
    finish(start(env, task, root / "fsdp", fsdp=True, steps=2))
    restart = finish(start(env, task, root / "fsdp", fsdp=True, steps=4))
    return task, root, {"replicated": (root / "replicated", finish(replicated)), "fsdp": (root / "fsdp", restart)}


def opt_state_leaves(workdir, step) -> int:
    return len(jax.tree.leaves(saved_items(workdir, step)["opt_state"]))


def assert_same_run(workdir, reference, steps):
    got, expected = losses(workdir), losses(reference)
    np.testing.assert_allclose([got[s] for s in steps], [expected[s] for s in steps], rtol=1e-5)
    params, expected_params = saved_items(workdir, 4)["params"], saved_items(reference, 4)["params"]
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(expected_params), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=2e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_fsdp_trains_saves_and_resumes_like_the_replicated_run(runs):
    task, _, out = runs
    (replicated, _), (fsdp, restart) = out["replicated"], out["fsdp"]
    assert "Resumed from" in restart and " at step 2 " in restart, restart[-3000:]
    assert sorted(losses(fsdp)) == [1, 2, 3, 4]
    assert_same_run(fsdp, replicated, steps=[1, 2, 3, 4])
    # Saved in the FSDP layout: Adam moments as trees (many leaves), not one raveled vector per module.
    assert opt_state_leaves(fsdp, 4) > opt_state_leaves(replicated, 4), task


@pytest.mark.slow
def test_a_checkpoint_of_the_other_layout_or_another_device_count_is_resumed(runs, env):
    """Step 2 of each layout resumed with the other, and the FSDP run's step 2 resumed on 4 devices instead of 8
    (a job restarted on a smaller slice: the stored shards are laid out anew), continue as the replicated run."""
    task, root, out = runs
    if task != "generation":
        pytest.skip("the conversion is task-agnostic (it maps the optimizer state's trees): one task shows it")
    four_devices = dict(env, XLA_FLAGS=env["XLA_FLAGS"].replace("device_count=8", "device_count=4"))
    assert four_devices["XLA_FLAGS"] != env["XLA_FLAGS"]
    started = {}
    for saved, resumed, devices in (("replicated", "fsdp", 8), ("fsdp", "replicated", 8), ("fsdp", "fsdp", 4)):
        workdir = root / f"{saved}_then_{resumed}_on_{devices}"
        copy_at_step_2(out[saved][0], workdir)
        run_env = env if devices == 8 else four_devices
        started[saved, resumed, devices] = workdir, start(run_env, task, workdir, fsdp=resumed == "fsdp", steps=4)
    for (saved, resumed, devices), (workdir, process) in started.items():
        restart = finish(process)
        assert f"{devices} device(s)" in restart
        if saved != resumed:
            assert f"was saved with config.mesh.fsdp={saved == 'fsdp'}" in restart, restart[-3000:]
        assert " at step 2 " in restart
        assert sorted(losses(workdir)) == [1, 2, 3, 4]
        assert_same_run(workdir, out["replicated"][0], steps=[3, 4])
        assert opt_state_leaves(workdir, 4) == opt_state_leaves(out[resumed][0], 4)  # saved in the new layout
