"""Matmul precision of the networks (config.precision) reaches every network and every product of a step.

(The bfloat16 train step of every task is tested beside the float32 one in tests/test_train.py, where it reuses
the float32 step's compiled program.)
"""

import jax
import pytest

from lzn_jax import tasks
from support import step_batch, step_configs, tiny_joint_config


def test_precision_reaches_every_network():
    """config.precision is a field of every network a task builds (a forgotten layer would default silently)."""
    config = tiny_joint_config()
    config.precision = "default"
    task = tasks.build(config)
    for module in (task.encoder, task.decoder):
        assert module.precision == jax.lax.Precision.DEFAULT
    assert tasks.build(step_configs()["representation"]).encoder.precision == jax.lax.Precision.HIGHEST


@pytest.mark.slow  # 13 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", ["generation_conditional", "representation"])
def test_every_product_of_a_train_step_is_highest_by_default(name):
    """Forward and backward of the loss: every conv and dot_general carries Precision.HIGHEST (the official
    float32). A layer that dropped the field would compute at the backend default (bf16 passes on TPU)."""
    config = step_configs()[name]
    task = tasks.build(config)
    batch = {k: v[:2] for k, v in step_batch(config).items()}
    params = task.init(jax.random.key(0), batch)
    noise = task.noise(jax.random.key(1), batch)
    grad = jax.grad(lambda p: task.loss(p, batch, noise, jax.random.key(2))[0])
    text = str(jax.make_jaxpr(grad)(params))
    products = text.count("dot_general[") + text.count("conv_general_dilated[")
    highest = text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)")
    assert products > 10 and highest == products, f"{products - highest} of {products} products are not HIGHEST"
