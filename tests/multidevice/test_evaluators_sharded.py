"""The evaluators' per-device functions on 8 devices (run by tests/test_multidevice.py)."""

from test_samplers import noise, test_rk45_runs_inside_the_evaluators_shard_map  # noqa: F401  (re-collected here)


def test_evaluator_functions_take_fsdp_sharded_params():
    """The bug: with `mesh.fsdp=True` the params arrive sharded over `data`, and every evaluator's per-device
    function refused them (`in_specs ... P(None,) does not match ... P('data',)`) at the run's first evaluation."""
    import jax
    import numpy as np

    from lzn_jax import parallel
    from lzn_jax.evaluators import common

    mesh = parallel.make_mesh()
    params = {"scale": np.arange(16, dtype=np.float32)}
    fsdp = jax.device_put(params, parallel.param_shardings(params, mesh, fsdp=True))
    assert fsdp["scale"].sharding.spec == jax.sharding.PartitionSpec(parallel.DATA)
    rows = jax.device_put(np.ones((8, 3), np.float32), parallel.batch_sharding(mesh))
    fn = common.sharded_fn(lambda p, x, *, axis_name: x * p["scale"].sum(), mesh, num_row_args=1)
    with jax.set_mesh(mesh):
        out = fn(fsdp, rows)
    np.testing.assert_array_equal(np.asarray(out), np.full((8, 3), 120.0))


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
