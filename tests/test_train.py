"""The train step of every task on tiny shapes (float32 and bfloat16 compute), skipping non-finite steps, freezing,
and a short run end to end."""

import json
import os

import jax
import numpy as np
import pytest

from support import FROZEN_FROM_STEP, step_batch, step_configs

from lzn_jax import configlib, files, parallel, train, train_state


def tiny(name, **updates):
    """support.step_configs()[name] (one small config per task, shared with the bfloat16 report) with overrides."""
    return configlib.override(step_configs()[name], **updates)


def one_step(config, batch_update=None, *, at_step=0):
    """One train step from a fresh state (its step counter set to `at_step`), both built as `train.setup` and
    `train_and_evaluate` build them."""
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    state = built.fresh_state(jax.random.key(config.seed))
    state = state.replace(step=jax.device_put(np.int32(at_step), built.shardings.step))
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


def assert_every_module_updated(before, after):
    assert all(x.dtype == np.float32 for x in jax.tree.leaves((after.params, after.ema_params)))
    for module in before.params:
        assert changed(before.params[module], after.params[module]), module
        assert changed(before.ema_params[module], after.ema_params[module]), module
        assert int(after.ema_counts[module]) == int(before.ema_counts[module]) + 1


TASKS = [
    ("generation_conditional", {}),  # case study 3: encoder + decoder + label anchors
    ("generation", {}),  # case study 1: encoder + decoder
    ("generation", {"encoder.name": ""}),  # the plain rectified-flow baseline
    ("representation", {}),  # case study 2
    ("simclr", {}),
]


def task_id(case):
    name, updates = case
    return "-".join([name, *(f"{k}={v or 'none'}" for k, v in updates.items())])


@pytest.mark.slow  # 488 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name, updates", TASKS, ids=[task_id(c) for c in TASKS])
def test_one_step_of_every_task_updates_every_module(name, updates):
    before, after, metrics = one_step(tiny(name, **updates))
    assert np.isfinite(metrics["loss"]) and metrics["skipped"] == 0
    assert int(after.step) == 1 and int(after.skipped_steps) == 0
    assert_every_module_updated(before, after)


# |loss_bf16 − loss_f32| allowed for one step from the same params and draws (`step_pair`): BF16_LOSS_RTOL ·
# |loss_f32| + BF16_LOSS_ATOL. bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation),
# so the networks' outputs differ by a fraction of a percent. The representation loss is a difference of near-equal
# log-probabilities, and its zoning amplifies that: measured (docs/results/numerics_bf16.txt, by
# `experiments/numerics_report.py --part bf16`) 1.5e-2 absolute on a loss of 0.48 at this batch, 1.1e-2 on a
# loss of 1.01 with noisier views. It is not relative to the loss: from the initial params, where this batch's loss
# is 0.009, a relative bound alone failed (0.59). Hence the absolute term. The others move by 2.5e-6 to 4e-4: the
# generation losses barely see the decoder's dtype this early (its output convolution starts at zero), so the
# decoder's bf16 path is held mainly by the parameter updates asserted below and experiments/device_check.sh.
BF16_LOSS_RTOL = 5e-2
BF16_LOSS_ATOL = 1e-2


def step_pair(config, batch):
    """One train step with float32 networks and one with bfloat16 networks, from the same state and draws.

    The state is the one after a first float32 step, not the initial one: NCSN++'s output convolution starts at
    zero (score_sde's init), so at init the decoder predicts 0 in any dtype and the generation loss cannot see the
    decoder's compute dtype at all (float32 and bfloat16 agreed to 1e-7 there). The float32 step is the program
    of `test_one_step_of_every_task_updates_every_module` (same config and shapes): a cache hit, not a compile.
    Returns (float32 metrics, bfloat16 metrics, the state before, the state after the bfloat16 step) on the host.
    """
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    high = train.build(config, mesh)
    low = train.build(configlib.override(config.copy_and_resolve_references(), dtype="bfloat16"), mesh)
    state = high.fresh_state(jax.random.key(config.seed))
    step_high = train_state.make_train_step(high.task, high.optimizer, mesh, high.shardings)
    step_low = train_state.make_train_step(low.task, low.optimizer, mesh, low.shardings)
    with jax.set_mesh(mesh):
        batch = parallel.global_batch(batch, mesh)
        state, _ = step_high(state, batch)
        before = host_copy(state)
        copy = jax.device_put(state, high.shardings, may_alias=False)  # each step donates its state
        _, metrics_high = step_high(state, batch)
        after, metrics_low = step_low(copy, batch)
    return jax.device_get(metrics_high), jax.device_get(metrics_low), before, host_copy(after)


def step_metrics(config, batch):
    """(float32 metrics, bfloat16 metrics) of `step_pair` (experiments/numerics_report.py prints them)."""
    return step_pair(config, batch)[:2]


@pytest.mark.slow  # 437 s cold on 2 cores before it shared its float32 steps (fast-tier budget)
@pytest.mark.parametrize("name", ["generation", "generation_conditional", "representation", "simclr"])
def test_bfloat16_step_is_finite_near_float32_and_updates_every_module(name):
    """A bf16 step (params float32, same draws) is finite, within the bound above of the float32 step, and moves
    every module's params and EMA (kept float32).

    Catches what bfloat16 compute breaks grossly: a network or loss that overflows to inf/NaN (a skipped step), a
    loss moved by far more than the rounding of the networks' outputs explains, or a module whose gradient is lost
    in bfloat16 (its params would not move). (The zoning kernel promotes bfloat16 inputs to float32 itself: see
    lzn_jax/zoning.py.)
    """
    config = tiny(name)
    reference, low, before, after = step_pair(config, step_batch(config))
    assert low["skipped"] == 0.0 and np.isfinite(low["loss"]) and np.isfinite(low["grad_norm"])
    assert_every_module_updated(before, after)
    high = float(reference["loss"])
    err = abs(float(low["loss"]) - high)
    print(f"{name}: float32 loss {high:.6f}, bfloat16 {float(low['loss']):.6f}, absolute {err:.2e}")
    bound = BF16_LOSS_RTOL * abs(high) + BF16_LOSS_ATOL
    assert err <= bound, f"{name}: bf16 loss {low['loss']} vs float32 {high} (absolute {err:.2e} > {bound:.2e})"


@pytest.mark.slow  # a load of test_one_step_of_every_task_updates_every_module[generation_conditional]'s program
def test_frozen_modules_do_not_change():
    """From its `module_steps` on, a module's params, EMA and Adam state stay as they are; the others train."""
    before, after, metrics = one_step(tiny("generation_conditional"), at_step=FROZEN_FROM_STEP)
    assert metrics["decoder_enabled"] == 0 and metrics["label_anchors_enabled"] == 0 and metrics["encoder_enabled"] == 1
    for module in ("decoder", "label_anchors"):
        assert not changed(before.params[module], after.params[module]), module
        assert not changed(before.ema_params[module], after.ema_params[module]), module
        assert not changed(before.opt_state.inner_states[module], after.opt_state.inner_states[module]), module
        assert int(after.ema_counts[module]) == int(before.ema_counts[module])
    assert changed(before.params["encoder"], after.params["encoder"])
    assert changed(before.ema_params["encoder"], after.ema_params["encoder"])


@pytest.mark.slow  # 18 s cold on 2 cores (fast-tier budget)
def test_a_non_finite_step_changes_nothing_but_the_counters():
    def poison(batch):
        image = np.array(batch["image"])
        image[3, 2, 2, 0] = np.nan
        return dict(batch, image=image)

    before, after, metrics = one_step(tiny("generation_conditional"), poison)  # the program of one_step[generation_conditional]
    assert metrics["skipped"] == 1
    assert int(after.step) == 1 and int(after.skipped_steps) == 1 and int(after.consecutive_skips) == 1
    for tree in ("params", "ema_params", "opt_state", "ema_counts"):
        assert not changed(getattr(before, tree), getattr(after, tree)), tree
    assert not np.array_equal(before.rng, after.rng)


@pytest.mark.slow  # 50 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("skipped, stop", [
    (range(60, 110), 150),  # 50 in a row between two checks (steps 100 and 150): once missed, read 41 and 0
    (range(51, 101), 100),  # 50 in a row ending at a check
    (range(60, 109), None),  # 49 in a row: goes on
])  # fmt: skip
def test_too_many_skipped_steps_in_a_row_stop_the_run_wherever_they_fall(skipped, stop):
    """The loop's check of max_consecutive_skips=50, read every 50 steps (as with log_every_steps >= 50)."""
    watch, consecutive = train._SkipWatch(50, every=50), 0
    for step in range(1, 201):
        consecutive = consecutive + 1 if step in skipped else 0
        counter = jax.numpy.asarray(consecutive)  # the step's state.consecutive_skips, a device scalar ...
        watch.add(counter)
        counter.delete()  # ... that the next step's donation deletes ("Array has been deleted" if it was kept)
        longest = watch.reached(step)
        if longest is not None:
            assert (step, longest) == (stop, len(skipped))
            return
    assert stop is None


def test_short_digits_run_writes_everything_and_resumes(tmp_path):
    # The program of test_one_step_of_every_task_updates_every_module[generation_conditional] (a cache load); its
    # decoder and label anchors freeze at step 2, so the run also crosses a freeze. (Dropout in the loop, and the
    # resume of its key, is tests/test_reliability.py's.)
    config = tiny("generation_conditional", num_train_steps=4, log_every_steps=2, checkpoint_every_steps=2)
    config.evals.class_accuracy.update(every_steps=4, splits=("test",))
    config.evals.samples.update(every_steps=3, per_class=1)  # step 3: evaluated, not a checkpoint step
    workdir = str(tmp_path / "run")
    state = train.train_and_evaluate(config, workdir)
    assert int(state.step) == 4
    entries = set(os.listdir(workdir))
    assert {"config.json", "metrics.jsonl", "checkpoints", "samples"} <= entries
    assert any(f.startswith("events.out.tfevents") for f in entries)
    records = files.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    final = {k: v for r in records if r["step"] == 4 for k, v in r.items()}
    assert {"train/loss", "train/recon", "train/label", "eval/accuracy", "eval/accuracy_std1"} <= set(final)
    enabled = {r["step"]: r["train/decoder_enabled"] for r in records if "train/decoder_enabled" in r}
    assert enabled == {2: 1.0, 4: 0.0}, enabled  # the window of steps 0-1 trained the decoder, that of 2-3 did not
    assert 0.0 <= final["eval/accuracy"] <= 1.0
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["euler_00000003.png", "euler_00000004.png"]
    # Every evaluated step is saved first: a preemption during step 3's evaluation once lost step 3 (repr_imagenet
    # probes every 1000 steps and checkpoints every 2000).
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 3, 4]
    assert json.load(open(os.path.join(workdir, "config.json")))["num_train_steps"] == 4
    # Asking for more steps continues from step 4 instead of starting again.
    config.num_train_steps = 6
    resumed = train.train_and_evaluate(config, workdir)
    assert int(resumed.step) == 6
    steps = [r["step"] for r in files.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "train/loss" in r]
    assert steps == [2, 4, 6]
