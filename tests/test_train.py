"""The train step of every task on tiny shapes, skipping non-finite steps, freezing, and a short run end to end."""

import json
import os

import jax
import numpy as np
import pytest

from support import load_config as load

from lzn_jax import configlib, files, parallel, train, train_state

TINY_TRUNK = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.1)


def tiny(name, **updates):
    """A digits config with tiny networks (runlocal) and the given overrides."""
    config = load(name, "runlocal")
    if config.encoder.get("name") == "ncsnpp_encoder":
        config.encoder.update(TINY_TRUNK)
    if config.decoder.get("name") == "ncsnpp_decoder":
        config.decoder.update(TINY_TRUNK)
    config.data.image_size = 8
    config.latent_dim = 64
    return configlib.override(config, **updates)


def one_step(config, batch_update=None):
    """One train step from a fresh state, both built as `train.setup` and `train_and_evaluate` build them."""
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    state = built.fresh_state(jax.random.key(config.seed))
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    batch = next(train.data.train_iterator(config.data, batch_size=config.batch_size, seed=0))
    if batch_update:
        batch = batch_update(batch)
    before = host_copy(state)  # the step donates `state`
    with jax.set_mesh(mesh):
        after, metrics = step(state, parallel.global_batch(batch, mesh))
    return before, host_copy(after), {k: float(v) for k, v in metrics.items()}


def host_copy(state):
    return state.replace(**{f: jax.tree.map(np.asarray, getattr(state, f)) for f in
                            ("params", "opt_state", "ema_params", "ema_counts")},
                         rng=jax.random.key_data(state.rng), step=np.asarray(state.step),
                         skipped_steps=np.asarray(state.skipped_steps), consecutive_skips=np.asarray(state.consecutive_skips))  # fmt: skip


def changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


TASKS = [
    ("digits_joint", {}),  # case study 3: encoder + decoder + label anchors
    ("digits_gen", {}),  # case study 1: encoder + decoder
    ("digits_gen", {"encoder.name": ""}),  # the plain rectified-flow baseline
    ("digits_repr", {}),  # case study 2
    ("digits_simclr", {}),
]
# The same step with the networks computing in bfloat16 (the TPU setting): params, Adam state and EMA stay float32.
BFLOAT16 = [pytest.param(name, {**updates, "dtype": "bfloat16"}, marks=pytest.mark.slow) for name, updates in TASKS]


def task_id(case):
    name, updates = case.values if hasattr(case, "values") else case
    return "-".join([name, *(f"{k}={v or 'none'}" for k, v in updates.items())])


@pytest.mark.slow  # 488 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name, updates", TASKS + BFLOAT16, ids=[task_id(c) for c in TASKS + BFLOAT16])
def test_one_step_of_every_task_updates_every_module(name, updates):
    before, after, metrics = one_step(tiny(name, **updates))
    assert np.isfinite(metrics["loss"]) and metrics["skipped"] == 0
    assert all(x.dtype == np.float32 for x in jax.tree.leaves((after.params, after.ema_params)))
    assert int(after.step) == 1 and int(after.skipped_steps) == 0
    for module in before.params:
        assert changed(before.params[module], after.params[module]), module
        assert changed(before.ema_params[module], after.ema_params[module]), module
        assert int(after.ema_counts[module]) == 1


@pytest.mark.slow  # 87 s cold on 2 cores (fast-tier budget)
def test_frozen_modules_do_not_change():
    config = tiny("digits_joint", **{"module_steps.decoder": 0, "module_steps.label_anchors": 0})
    before, after, metrics = one_step(config)
    assert metrics["decoder_enabled"] == 0 and metrics["encoder_enabled"] == 1
    assert not changed(before.params["decoder"], after.params["decoder"])
    assert not changed(before.params["label_anchors"], after.params["label_anchors"])
    assert not changed(before.ema_params["decoder"], after.ema_params["decoder"])
    assert changed(before.params["encoder"], after.params["encoder"])


@pytest.mark.slow  # 18 s cold on 2 cores (fast-tier budget)
def test_a_non_finite_step_changes_nothing_but_the_counters():
    def poison(batch):
        image = np.array(batch["image"])
        image[3, 2, 2, 0] = np.nan
        return dict(batch, image=image)

    before, after, metrics = one_step(tiny("digits_joint"), poison)
    assert metrics["skipped"] == 1
    assert int(after.step) == 1 and int(after.skipped_steps) == 1 and int(after.consecutive_skips) == 1
    for tree in ("params", "ema_params", "opt_state", "ema_counts"):
        assert not changed(getattr(before, tree), getattr(after, tree)), tree
    assert not np.array_equal(before.rng, after.rng)


@pytest.mark.slow  # 50 s cold on 2 cores (fast-tier budget)
def test_short_digits_run_writes_everything_and_resumes(tmp_path):
    config = tiny("digits_joint", num_train_steps=4, log_every_steps=2, checkpoint_every_steps=2)
    config.evals.class_accuracy.update(every_steps=4, splits=("test",))
    config.evals.samples.update(every_steps=4, per_class=1)
    workdir = str(tmp_path / "run")
    state = train.train_and_evaluate(config, workdir)
    assert int(state.step) == 4
    entries = set(os.listdir(workdir))
    assert {"config.json", "metrics.jsonl", "checkpoints", "samples"} <= entries
    assert any(f.startswith("events.out.tfevents") for f in entries)
    records = files.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    final = {k: v for r in records if r["step"] == 4 for k, v in r.items()}
    assert {"train/loss", "train/recon", "train/label", "eval/accuracy", "eval/accuracy_std1"} <= set(final)
    assert 0.0 <= final["eval/accuracy"] <= 1.0
    assert os.listdir(os.path.join(workdir, "samples")) == ["euler_00000004.png"]
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]
    assert json.load(open(os.path.join(workdir, "config.json")))["num_train_steps"] == 4
    # Asking for more steps continues from step 4 instead of starting again.
    config.num_train_steps = 6
    resumed = train.train_and_evaluate(config, workdir)
    assert int(resumed.step) == 6
    steps = [r["step"] for r in files.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
    assert steps == [2, 4, 6]
