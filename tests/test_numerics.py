"""Compute dtype and matmul precision of the networks (config.dtype, config.precision).

A bfloat16 train step of every task must stay finite and near the float32 step (the zoning kernel and the losses
run in float32 whatever the networks compute in), and `config.precision` must reach every network.
"""

import jax
import numpy as np
import pytest

from lzn_jax import configlib, parallel, tasks, train, train_state
from support import load_config, tiny_joint_config

# |loss_bf16 − loss_f32| allowed for one step from the same params and draws (`step_metrics`): BF16_LOSS_RTOL ·
# |loss_f32| + BF16_LOSS_ATOL. bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation),
# so the networks' outputs differ by a fraction of a percent. The representation loss is a difference of near-equal
# log-probabilities, and its zoning amplifies that: measured (docs/results/numerics_bf16.txt, by
# `experiments/numerics_report.py --part bf16`) 1.8e-2 absolute on a loss of 0.48 at this file's batch, 7.4e-3 on a
# loss of 1.02 with noisier views. It is not relative to the loss: from the initial params, where this batch's loss
# is 0.009, a relative bound alone failed (0.59). Hence the absolute term. The other tasks move by 4e-6 to 2e-4: the
# generation losses barely see the decoder's dtype this early (its output convolution starts at zero), so the
# decoder's bf16 path is held mainly by tests/test_train.py's bf16 steps and experiments/device_check.sh.
BF16_LOSS_RTOL = 5e-2
BF16_LOSS_ATOL = 1e-2


def _configs():
    gen = load_config("digits_gen", "runlocal")
    gen.encoder.update(attn_resolutions=())
    gen.decoder.update(attn_resolutions=())
    joint = tiny_joint_config()
    repr_ = load_config("digits_repr", "runlocal")
    simclr = load_config("digits_simclr", "runlocal")
    for config in (repr_, simclr):
        config.encoder.update(depth=18, base_width=32, small_images=True)
    return {"generation": gen, "generation_conditional": joint, "representation": repr_, "simclr": simclr}


def step_metrics(config, batch):
    """(float32 metrics, bfloat16 metrics) of one train step of each compute dtype from the same state and draws.

    The state is the one after a first float32 step, not the initial one: NCSN++'s output convolution starts at
    zero (score_sde's init), so at init the decoder predicts 0 in any dtype and the generation loss cannot see the
    decoder's compute dtype at all (float32 and bfloat16 agreed to 1e-7 there).
    """
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    high = train.build(config, mesh)
    low = train.build(configlib.override(config.copy_and_resolve_references(), dtype="bfloat16"), mesh)
    # Eager (the same init without minutes of compiling the initialisers on CPU); copied, because eager init
    # shares one zero buffer between counters and the step donates them.
    state = jax.device_put(high.init(jax.random.key(config.seed)), high.shardings, may_alias=False)
    step_high = train_state.make_train_step(high.task, high.optimizer, mesh, high.shardings)
    step_low = train_state.make_train_step(low.task, low.optimizer, mesh, low.shardings)
    with jax.set_mesh(mesh):
        batch = jax.device_put(batch, parallel.batch_sharding(mesh))
        state, _ = step_high(state, batch)
        copy = jax.device_put(state, high.shardings, may_alias=False)  # each step donates its state
        _, metrics_high = step_high(state, batch)
        _, metrics_low = step_low(copy, batch)
    return jax.device_get(metrics_high), jax.device_get(metrics_low)


def _batch(config):
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    batch = {"image": rng.uniform(-1, 1, shape).astype(np.float32),
             "label": rng.integers(0, config.num_classes, shape[:1]).astype(np.int32)}  # fmt: skip
    if config.data.num_views == 2:
        batch["image2"] = np.clip(batch["image"] + 0.1 * rng.standard_normal(shape), -1, 1).astype(np.float32)
    return batch


@pytest.mark.slow  # 437 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", ["generation", "generation_conditional", "representation", "simclr"])
def test_bfloat16_step_is_finite_and_near_float32(name):
    """A bf16 step (params float32, same draws) is finite and within the bound above of the float32 step.

    Catches what bfloat16 compute breaks grossly: a network or loss that overflows to inf/NaN (a skipped step), or
    a loss moved by far more than the rounding of the networks' outputs explains. (The zoning kernel promotes
    bfloat16 inputs to float32 itself: see lzn_jax/zoning.py.)
    """
    config = _configs()[name]
    reference, low = step_metrics(config, _batch(config))
    assert low["skipped"] == 0.0 and np.isfinite(low["loss"]) and np.isfinite(low["grad_norm"])
    high = float(reference["loss"])
    err = abs(float(low["loss"]) - high)
    print(f"{name}: float32 loss {high:.6f}, bfloat16 {float(low['loss']):.6f}, absolute {err:.2e}")
    bound = BF16_LOSS_RTOL * abs(high) + BF16_LOSS_ATOL
    assert err <= bound, f"{name}: bf16 loss {low['loss']} vs float32 {high} (absolute {err:.2e} > {bound:.2e})"


def test_precision_reaches_every_network():
    """config.precision is a field of every network a task builds (a forgotten layer would default silently)."""
    config = tiny_joint_config()
    config.precision = "default"
    task = tasks.build(config)
    for module in (task.encoder, task.decoder):
        assert module.precision == jax.lax.Precision.DEFAULT
    assert tasks.build(_configs()["representation"]).encoder.precision == jax.lax.Precision.HIGHEST


@pytest.mark.slow  # 13 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", ["generation_conditional", "representation"])
def test_every_product_of_a_train_step_is_highest_by_default(name):
    """Forward and backward of the loss: every conv and dot_general carries Precision.HIGHEST (the official
    float32). A layer that dropped the field would compute at the backend default (bf16 passes on TPU)."""
    config = _configs()[name]
    task = tasks.build(config)
    batch = {k: v[:2] for k, v in _batch(config).items()}
    params = task.init(jax.random.key(0), batch)
    noise = task.noise(jax.random.key(1), batch)
    grad = jax.grad(lambda p: task.loss(p, batch, noise, jax.random.key(2))[0])
    text = str(jax.make_jaxpr(grad)(params))
    products = text.count("dot_general[") + text.count("conv_general_dilated[")
    highest = text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)")
    assert products > 10 and highest == products, f"{products - highest} of {products} products are not HIGHEST"
