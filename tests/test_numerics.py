"""Compute dtype and matmul precision of the networks (config.dtype, config.precision).

A bfloat16 train step of every task must stay finite and near the float32 step (the zoning kernel and the losses
run in float32 whatever the networks compute in), and `config.precision` must reach every network.
"""

import jax
import numpy as np
import pytest

from lzn_jax import parallel, tasks, train, train_state
from support import load_config, tiny_joint_config

# |loss_bf16 − loss_f32| allowed after one step from the same params and draws: BF16_LOSS_RTOL · |loss_f32| +
# BF16_LOSS_ATOL. bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per operation); the networks'
# outputs then differ by ~0.6 % (ResNet-18 anchors: 6.5e-3 relative). The representation loss is a difference of
# near-equal log-probabilities: its bf16 error is an absolute ~5e-3 whatever the loss's size (4.8e-3 on a loss of
# 0.18 and on one of 0.99; on this file's batch, whose loss is 0.009, a relative bound alone would fail at 0.59).
# Hence the absolute term, twice the measured error. Printed by `experiments/numerics_report.py --part bf16`
# (docs/results/numerics_bf16.txt) and by `pytest -s` of this file.
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


def _one_step(config, batch):
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    # Eager (the same init without minutes of compiling the initialisers on CPU); copied, because eager init
    # shares one zero buffer between counters and the step donates them.
    state = jax.device_put(built.init(jax.random.key(config.seed)), built.shardings, may_alias=False)
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    with jax.set_mesh(mesh):
        _, metrics = step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
    return jax.device_get(metrics)


def _batch(config):
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    batch = {"image": rng.uniform(-1, 1, shape).astype(np.float32),
             "label": rng.integers(0, config.num_classes, shape[:1]).astype(np.int32)}  # fmt: skip
    if config.data.num_views == 2:
        batch["image2"] = np.clip(batch["image"] + 0.1 * rng.standard_normal(shape), -1, 1).astype(np.float32)
    return batch


@pytest.mark.parametrize("name", ["generation", "generation_conditional", "representation", "simclr"])
def test_bfloat16_step_is_finite_and_near_float32(name):
    """A bf16 step (params float32, same draws) is finite and within the bound above of the float32 step.

    Catches what bfloat16 compute breaks grossly: a network or loss that overflows to inf/NaN (a skipped step), or
    a loss moved by far more than the rounding of the networks' outputs explains. (The zoning kernel promotes
    bfloat16 inputs to float32 itself: see lzn_jax/zoning.py.)
    """
    config = _configs()[name]
    batch = _batch(config)
    reference = _one_step(config, batch)
    config.dtype = "bfloat16"
    low = _one_step(config, batch)
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
