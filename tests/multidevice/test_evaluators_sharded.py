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
