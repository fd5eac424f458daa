"""The kernel under jax.shard_map on 8 host devices equals the single-device kernel (values and gradients).

Run through tests/test_multidevice.py, which starts a process with 8 forced CPU devices. Comparisons run in
float64 so that they check the sharded algorithm itself; float32 would only compare summation orders.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lzn_jax import losses, zoning

DEVICES = 8


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == DEVICES, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return jax.make_mesh((DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


def rows(mesh, *arrays):
    """Places arrays row-sharded over the mesh, as a data-parallel train step receives them."""
    return jax.device_put(arrays, jax.sharding.NamedSharding(mesh, P("data")))


def problem(b=32, d=5, seed=0):
    rng = np.random.default_rng(seed)
    view1 = rng.normal(size=(b, d))
    view2 = view1 + 0.5 * rng.normal(size=(b, d))
    prior = 0.45 * rng.normal(size=(b, d))
    return jnp.asarray(view1), jnp.asarray(view2), jnp.asarray(prior)


@pytest.mark.parametrize("solver", ["euler", "dpm_solver++"])
def test_sharded_flows_equal_single_device(mesh, solver):
    view1, view2, prior = problem()
    lat = zoning.latents(view1, prior, num_steps=8, solver=solver)
    end, log_probs = zoning.assign(view2, lat, num_steps=8, solver=solver)

    lat_s = zoning.sharded(zoning.latents, mesh)(view1, prior, num_steps=8, solver=solver)
    end_s, log_probs_s = zoning.sharded(zoning.assign, mesh)(view2, lat, num_steps=8, solver=solver)
    np.testing.assert_allclose(lat_s, lat, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(end_s, end, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_probs_s), np.exp(log_probs), atol=1e-12)
    assert log_probs_s.shape == (8, 32, 32)  # columns are global anchor indices


def test_sharded_loss_and_gradients_equal_single_device(mesh):
    """Case study 2 under shard_map: anchors gathered, own columns offset per device, grads back to owners."""
    view1, view2, prior = problem()

    def loss_single(view1, view2):
        lat = zoning.latents(view1, prior, num_steps=10)
        _, lp = zoning.assign(view2, lat, num_steps=10, targets=jnp.arange(view1.shape[0]))
        return losses.representation_loss(lp)["total"]

    def loss_local(view1, view2, prior):
        lat = zoning.latents(view1, prior, num_steps=10, axis_name="data")
        own = zoning.own_columns(view1.shape[0], "data")
        _, lp = zoning.assign(view2, lat, num_steps=10, targets=own, axis_name="data")
        # equal rows per device: the mean of local means is the global mean
        return jax.lax.pmean(losses.representation_loss(lp)["total"], "data")

    sharded_loss = jax.shard_map(loss_local, mesh=mesh, in_specs=(P("data"), P("data"), P("data")), out_specs=P())
    loss, grads = jax.jit(jax.value_and_grad(loss_single, argnums=(0, 1)))(view1, view2)
    loss_s, grads_s = jax.jit(jax.value_and_grad(sharded_loss, argnums=(0, 1)))(*rows(mesh, view1, view2, prior))
    np.testing.assert_allclose(loss_s, loss, rtol=1e-10)
    for g_s, g in zip(grads_s, grads):
        np.testing.assert_allclose(g_s, g, rtol=1e-8, atol=1e-12)


def test_sharded_class_weights_and_weighted_assign(mesh):
    rng = np.random.default_rng(1)
    labels = jnp.asarray(rng.integers(0, 5, size=32))
    label_anchors = jnp.asarray(rng.normal(size=(5, 4)))
    lat = jnp.asarray(rng.normal(size=(32, 4)))
    weights = losses.class_weights(labels, 5)

    def local(labels, lat):
        w = losses.class_weights(labels, 5, axis_name="data")
        # label anchors are replicated, so this assign needs no axis_name
        _, lp = zoning.assign(label_anchors, lat, num_steps=10, weights=w, targets=labels)
        return w, lp

    w_s, lp_s = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=(P(), P(None, "data")))(
        *rows(mesh, labels, lat)
    )
    _, lp = zoning.assign(label_anchors, lat, num_steps=10, weights=weights, targets=labels)
    np.testing.assert_allclose(w_s, weights, rtol=1e-12)
    np.testing.assert_allclose(lp_s, lp, rtol=1e-10, atol=1e-12)


def test_rows_not_divisible_by_the_axis_size_raise(mesh):
    view1, _, prior = problem(b=12)
    with pytest.raises(ValueError, match="divide evenly across the 8 devices"):
        zoning.sharded(zoning.latents, mesh)(view1, prior, num_steps=4)
    with pytest.raises(ValueError, match="no axis 'model'"):
        zoning.sharded(zoning.latents, mesh, axis_name="model")
