"""The evaluators' per-device functions on 8 devices (run by tests/test_multidevice.py)."""

from test_samplers import noise, test_rk45_runs_inside_the_evaluators_shard_map  # noqa: F401  (re-collected here)


def test_evaluator_functions_take_fsdp_sharded_params():
    """The bugs: with `mesh.fsdp=True` the params arrive sharded over `data`, and every evaluator's per-device
    function refused them (`in_specs ... P(None,) does not match ... P('data',)`) at the run's first evaluation;
    and shards gathered along the wrong axis or in the wrong device order would hand the network permuted
    weights (a sum over them, as this test once took, cannot see that; a gather inside the shard_map that took
    every split axis as axis 0, tried in stop 39, fails this test). Every device returns every parameter value in order: both layouts, and host arrays, give
    exactly the host's values."""
    import jax
    import numpy as np

    from lzn_jax import parallel
    from lzn_jax.evaluators import common

    mesh = parallel.make_mesh()
    params = {"w": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
              "b": -np.arange(3 * 8, dtype=np.float32).reshape(3, 8), "s": np.float32(7.0)}  # fmt: skip
    expected = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    rows = jax.device_put(np.ones((8, 1), np.float32), parallel.batch_sharding(mesh))

    def every_value(p, x, *, axis_name):
        flat = jax.numpy.concatenate([jax.numpy.ravel(v) for v in jax.tree.leaves(p)])
        return x * flat  # [rows, all values]

    fn = common.sharded_fn(every_value, mesh, num_row_args=1)
    for fsdp in (False, True):
        placed = jax.device_put(params, parallel.param_shardings(params, mesh, fsdp=fsdp))
        if fsdp:  # split along axis 0 of "w", axis 1 of "b"
            specs = {k: v.sharding.spec for k, v in placed.items()}
            P = jax.sharding.PartitionSpec
            assert specs == {"w": P(parallel.DATA, None), "b": P(None, parallel.DATA), "s": P()}, specs
        with jax.set_mesh(mesh):
            out = fn(placed, rows)
        np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(expected, (8, expected.size)))
    host = fn(params, rows)  # host arrays: placed whole on every device
    np.testing.assert_array_equal(np.asarray(host), np.broadcast_to(expected, (8, expected.size)))


def test_inception_features_split_over_8_devices_equal_one_device():
    """FID's Inception pass split over the mesh (each device batch_size / 8 images, inside the loop's mesh) gives
    the features of one device running the whole batch. Bug this catches: rows gathered in another order than
    they were split, or padding rows (10 images in batches of 4: 3 padded to a multiple of 8) leaking in."""
    import jax
    import numpy as np

    from lzn_jax import parallel
    from lzn_jax.evaluators import fid, inception

    variables = inception.init_inception_variables(0)
    images = np.random.default_rng(0).uniform(-1, 1, (10, 8, 8, 3)).astype(np.float32)
    mesh = parallel.make_mesh()
    with jax.set_mesh(mesh):
        split = fid.InceptionFeatures(variables, batch_size=4, mesh=mesh)(images, fid.RF)
    whole = fid.InceptionFeatures(variables, batch_size=4)(images, fid.RF)
    assert split.shape == (10, inception.FEATURE_DIM)
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-5)
