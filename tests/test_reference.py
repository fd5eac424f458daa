"""Golden vectors recorded from the official PyTorch code (float64): every file in the reference dir.

See ../shared/reference/README.md for the keys. Each check is relative: max |ours − ref| / max |ref| ≤ 1e-7.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax import losses, zoning

TOL = 1e-7


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def assert_close(ours, ref, name):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    err = np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-300)
    assert err <= TOL, f"{name}: relative error {err:.3e} > {TOL}"


def load(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow  # 11 s cold on 2 cores (fast-tier budget)
def test_case_study_2_flows_loss_and_gradients(latent_flows_file):
    r = load(latent_flows_file)
    steps, cutoff = int(r["c_steps"]), float(r["c_cutoff"])
    prior = jnp.asarray(r["c_prior"] * r["c_prior_scale"])
    own = jnp.arange(r["c_anchors1"].shape[0])
    view1, view2 = jnp.asarray(r["c_anchors1"]), jnp.asarray(r["c_anchors2"])

    @jax.jit
    def flows(view1, view2):
        lat = zoning.latents(view1, prior, num_steps=steps)
        end, log_probs = zoning.assign(view2, lat, num_steps=steps)
        return lat, end, log_probs

    lat, end, log_probs = flows(view1, view2)
    assert_close(lat, r["c_latent"], "c_latent")
    assert_close(end, r["c_final"], "c_final")
    assert_close(jnp.exp(log_probs), r["c_assign_probs"], "c_assign_probs")

    @functools.partial(jax.jit, static_argnames="block_size")
    @functools.partial(jax.value_and_grad, argnums=(0, 1), has_aux=True)
    def loss_fn(view1, view2, block_size=None):
        lat = zoning.latents(view1, prior, num_steps=steps, block_size=block_size)
        _, target_log_probs = zoning.assign(view2, lat, num_steps=steps, targets=own, block_size=block_size)
        return losses.representation_loss(target_log_probs, cutoff=cutoff)["total"], target_log_probs

    # The dense path, and the blocked path with a tile size that does not divide the batch.
    for block_size in (None, 7):
        (loss, target_log_probs), (grad1, grad2) = loss_fn(view1, view2, block_size=block_size)
        assert_close(loss, r["c_loss"], f"c_loss (block_size={block_size})")
        assert_close(losses.assignment_accuracy(target_log_probs), r["c_assignment_acc"], "c_assignment_acc")
        assert_close(grad1, r["c_grad_anchors1"], f"c_grad_anchors1 (block_size={block_size})")
        assert_close(grad2, r["c_grad_anchors2"], f"c_grad_anchors2 (block_size={block_size})")


@pytest.mark.slow  # 8 s cold on 2 cores (fast-tier budget)
def test_dpm_solver_flows_and_gradient(latent_flows_file):
    r = load(latent_flows_file)
    steps = int(r["d_steps"])
    anchors, prior = jnp.asarray(r["d_anchors"]), jnp.asarray(r["d_prior"])

    @jax.jit
    def flows(anchors):
        lat = zoning.latents(anchors, prior, num_steps=steps, solver="dpm_solver++")
        end, log_probs = zoning.assign(anchors, lat, num_steps=steps, solver="dpm_solver++")
        return lat, end, log_probs

    lat, end, log_probs = flows(anchors)
    assert_close(lat, r["d_latent"], "d_latent")
    assert_close(end, r["d_final"], "d_final")
    assert_close(jnp.exp(log_probs), r["d_assign_probs"], "d_assign_probs")

    grad = jax.jit(jax.grad(lambda a: jnp.sum(zoning.latents(a, prior, num_steps=steps, solver="dpm_solver++") ** 2)))
    assert_close(grad(anchors), r["d_grad_sq_latent"], "d_grad_sq_latent")


@pytest.mark.slow  # 16 s cold on 2 cores (fast-tier budget)
def test_label_flows_loss_gradients_and_prediction(latent_flows_file):
    r = load(latent_flows_file)
    steps, cutoff = int(r["l_steps"]), float(r["l_cutoff"])
    labels = jnp.asarray(r["l_labels"])
    num_classes = r["l_label_anchors"].shape[0]
    image_anchors, label_anchors = jnp.asarray(r["l_image_anchors"]), jnp.asarray(r["l_label_anchors"])
    prior = jnp.asarray(r["l_prior"])

    weights = losses.class_weights(labels, num_classes)
    assert_close(weights, r["l_class_weights"], "l_class_weights")

    def image_latents(image_anchors):
        return zoning.latents(image_anchors, prior, num_steps=20, solver="dpm_solver++")

    @jax.jit
    def flows(image_anchors, label_anchors):
        lat = image_latents(image_anchors)
        end, log_probs = zoning.assign(label_anchors, lat, num_steps=steps, weights=weights)
        return lat, end, log_probs

    lat, end, log_probs = flows(image_anchors, label_anchors)
    assert_close(lat, r["l_image_latent"], "l_image_latent")
    assert_close(end, r["l_final"], "l_final")
    assert_close(jnp.exp(log_probs), r["l_assign_probs"], "l_assign_probs")
    np.testing.assert_array_equal(losses.nearest_anchor(label_anchors, end), r["l_predicted"])

    @jax.jit
    @functools.partial(jax.value_and_grad, argnums=(0, 1))
    def loss_fn(image_anchors, label_anchors):
        lat = image_latents(image_anchors)
        _, target_log_probs = zoning.assign(label_anchors, lat, num_steps=steps, weights=weights, targets=labels)
        return losses.label_loss(target_log_probs, cutoff=cutoff)

    loss, (grad_image, grad_label) = loss_fn(image_anchors, label_anchors)
    assert_close(loss, r["l_loss"], "l_loss")
    assert_close(grad_image, r["l_grad_image_anchors"], "l_grad_image_anchors")
    assert_close(grad_label, r["l_grad_label_anchors"], "l_grad_label_anchors")

    label_latent = jax.jit(
        lambda a: zoning.latents(a, jnp.asarray(r["l_prior2"]), num_steps=steps, points=a[labels])
    )(label_anchors)
    assert_close(label_latent, r["l_label_latent"], "l_label_latent")
