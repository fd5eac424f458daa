import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import TINY_TRUNK, load_config

from lzn_jax import configlib, data, losses, parallel, train

# P[s, i] for 5 steps, 2 rows: row 0 peaks at step 1 (before the cut-off of 0.4·5 = 2), row 1 at step 3.
PROBS = np.array([[0.1, 0.2], [0.9, 0.3], [0.5, 0.4], [0.6, 0.8], [0.4, 0.7]])


def test_representation_loss_takes_the_best_step_after_the_cutoff():
    out = losses.representation_loss(jnp.log(PROBS), cutoff=0.4, prob_weight=0.5, cross_entropy_weight=2.0)
    best = np.array([0.6, 0.8])  # row 0: max over steps 2..4, not the 0.9 at step 1
    np.testing.assert_allclose(out["prob"], -best.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["cross_entropy"], -np.log(best).mean(), rtol=1e-6)
    np.testing.assert_allclose(out["total"], 0.5 * out["prob"] + 2.0 * out["cross_entropy"], rtol=1e-6)


def test_label_loss_is_minus_the_mean_best_probability():
    np.testing.assert_allclose(losses.label_loss(jnp.log(PROBS), cutoff=0.0), -np.mean([0.9, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(losses.label_loss(jnp.log(PROBS), cutoff=0.4), -np.mean([0.6, 0.8]), rtol=1e-6)


def test_cutoff_must_leave_steps():
    with pytest.raises(ValueError, match="cutoff"):
        losses.label_loss(jnp.log(PROBS), cutoff=1.0)
    with pytest.raises(ValueError, match=r"\[num_steps, B\]"):
        losses.label_loss(jnp.zeros((5, 2, 3)))


def test_class_weights_are_batch_frequencies_with_absent_classes_zero():
    weights = losses.class_weights(jnp.asarray([0, 2, 2, 3]), 5)
    np.testing.assert_allclose(weights, [0.25, 0.0, 0.5, 0.25, 0.0])


def test_assignment_accuracy_reads_the_last_step():
    np.testing.assert_allclose(losses.assignment_accuracy(jnp.log(PROBS)), np.mean([0.4, 0.7]), rtol=1e-6)


def test_nearest_anchor_and_ode_error():
    anchors = jnp.asarray([[0.0, 2.0], [3.0, 0.0], [-4.0, 0.0]])
    ends = jnp.asarray([[2.9, 0.1], [-3.0, 0.0], [0.0, 2.0]])
    np.testing.assert_array_equal(losses.nearest_anchor(anchors, ends), [1, 2, 0])
    expected = np.mean([np.hypot(0.1, 0.1) / 3.0, 1.0 / 4.0, 0.0])
    np.testing.assert_allclose(losses.ode_error(anchors, ends), expected, rtol=1e-6)


def test_class_weights_leave_out_masked_rows():
    weights = losses.class_weights(jnp.asarray([0, 2, 2, 3]), 4, mask=jnp.asarray([True, True, False, False]))
    np.testing.assert_allclose(weights, [0.5, 0.0, 0.5, 0.0])


# ----------------------------------------------------------------- the task losses against NumPy formulas


def built_task(name, **updates):
    """(task, params, batch) of a tiny digits config, built through train.build as `main` builds it."""
    config = load_config(name, "runlocal")
    for section in ("encoder", "decoder"):
        if config[section].get("name", "").startswith("ncsnpp"):
            config[section].update(TINY_TRUNK)
    config.data.image_size = 8
    configlib.override(config, **updates)
    built = train.build(config, parallel.make_mesh(-1))
    state = built.init(jax.random.key(0))
    batch = next(data.train_iterator(config.data, batch_size=config.batch_size, seed=0))
    return built.task, state.params, {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.slow  # 26 s cold on 2 cores (fast-tier budget)
def test_rectified_flow_loss_is_the_mean_squared_velocity_error():
    """mean over pixels of (x1 − x0 − v(t, t·x1 + (1−t)·x0))²: the official decoder loss. A reversed
    interpolation, target x0 − x1, or a time scaled differently changes the value."""
    task, params, batch = built_task("digits_gen", **{"encoder.name": ""})  # the plain rectified flow
    noise = task.noise(jax.random.key(1), batch)
    loss, metrics = task.loss(params, batch, noise, jax.random.key(2))
    x1, x0, t = (np.asarray(a, np.float64) for a in (batch["image"], noise["x0"], noise["t"]))
    xt = t[:, None, None, None] * x1 + (1.0 - t[:, None, None, None]) * x0
    velocity = task.decoder.apply({"params": params["decoder"]}, None, None, jnp.asarray(t, jnp.float32),
                                  jnp.asarray(xt, jnp.float32))  # fmt: skip  # (dropout 0: train mode is the same)
    expected = np.mean((x1 - x0 - np.asarray(velocity, np.float64)) ** 2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["recon"]), expected, rtol=1e-5)


def nt_xent_numpy(z1, z2, temperature):
    """SimCLR's NT-Xent: 2N normalised views; view i's positive is the other view of its image, every other view
    a negative: mean over the 2N views of −log exp(s_ip / τ) / Σ_{k≠i} exp(s_ik / τ)."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sims = z @ z.T / temperature
    losses_ = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        losses_.append(-(sims[i, positive] - np.log(np.sum(np.exp(sims[i, others])))))
    return np.mean(losses_)


@pytest.mark.slow  # 43 s cold on 2 cores (fast-tier budget)
def test_simclr_loss_is_nt_xent():
    task, params, batch = built_task("digits_simclr", **{"loss.temperature": 0.3, "encoder.depth": 18})
    loss, _ = task.loss(params, batch, task.noise(jax.random.key(1), batch), jax.random.key(2))
    z1 = np.asarray(task.embed(params, batch["image"]))  # the ResNet has no dropout: train mode is the same
    z2 = np.asarray(task.embed(params, batch["image2"]))
    np.testing.assert_allclose(float(loss), nt_xent_numpy(z1, z2, 0.3), rtol=1e-5)
