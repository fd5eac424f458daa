import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax import losses

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
