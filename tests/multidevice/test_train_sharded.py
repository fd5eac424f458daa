"""The same train program on 1 device, on 8, and with FSDP on a 4×2 (data × model) mesh: same losses and params.

Run through tests/test_multidevice.py (8 forced CPU devices). Case study 2 on a tiny digits encoder: each
device zones its rows against the anchors of the whole global batch (gathered across devices), targets are
global anchor indices, and gradients are all-reduced (reduce-scattered under FSDP). Dropout is 0 because its
masks are drawn per device and so depend on the layout; every other random draw is made per global example.

Adam's eps is raised to 0.1. The zoning loss is invariant under shifting every anchor by the same vector, so
the gradient of the encoder heads' output biases is zero up to float32 rounding, and rounding differs with the
summation order. With eps = 1e-8 Adam divides that noise by its own magnitude and moves those biases by up to
±lr on any layout; with eps = 0.1 updates follow the gradient itself, and the parameters compare at the
precision of the gradients (≈1e-7 here), while a missing or doubled reduction would show at ≈1e-4. The configs'
eps = 1e-8 is compared too, with the bound that drift allows
(`test_with_adams_default_eps_the_losses_match_and_only_noise_driven_parameters_move_apart`).
"""

import functools

import jax
import numpy as np
import pytest

from support import load_config

from lzn_jax import configlib, data, evaluators, optim, parallel, train, train_state

STEPS = 3
TINY_TRUNK = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)


def tiny_config(data_devices=1, model_devices=1, fsdp=False, name="digits_repr", eps=0.1):
    """Case study 2 (or `name`) with the tiny NCSN++ encoder of the joint digits config: quick to compile."""
    config = load_config(name, "runlocal")
    config.encoder = load_config("digits_joint", "runlocal").encoder
    config.encoder.update(TINY_TRUNK)
    if config.decoder.get("name"):
        config.decoder.update(TINY_TRUNK)
    return configlib.override(
        config, **{"data.image_size": 8, "latent_dim": 16, "batch_size": 16, "optim.eps": eps, "zoning.num_steps": 4,
                   "mesh.data": data_devices, "mesh.model": model_devices, "mesh.fsdp": fsdp},
    )  # fmt: skip


@functools.cache
def host_batches():
    config = tiny_config()
    batches = data.train_iterator(config.data, batch_size=config.batch_size, seed=config.seed)
    return [next(batches) for _ in range(STEPS)]


def per_device_bytes(tree) -> int:
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


@functools.cache
def trained(data_devices, model_devices, fsdp, eps=0.1):
    """STEPS steps from the same init and batches: (losses [STEPS], params, initial params, state bytes per device)."""
    config = tiny_config(data_devices, model_devices, fsdp, eps=eps)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)  # as train.setup builds it
    state = built.fresh_state(jax.random.key(config.seed))
    initial = jax.tree.map(np.asarray, state.params)
    stored = per_device_bytes((state.params, state.ema_params, state.opt_state))
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    losses = []
    with jax.set_mesh(mesh):
        for batch in host_batches():
            state, metrics = step(state, parallel.global_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
        assert float(metrics["skipped"]) == 0.0
    return np.asarray(losses), jax.tree.map(np.asarray, state.params), initial, stored


def test_make_mesh_lays_out_data_and_model_axes():
    mesh = parallel.make_mesh(-1, 2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert [d.id for d in mesh.devices[1]] == [2, 3]  # model is the minor axis: a host's devices are whole rows
    assert dict(parallel.make_mesh(1).shape) == {"data": 1, "model": 1}
    with pytest.raises(ValueError, match="config.mesh.model=3"):
        parallel.make_mesh(-1, 3)
    with pytest.raises(ValueError, match="config.mesh.data=3"):
        parallel.make_mesh(3, 2)


@pytest.mark.parametrize("data_devices, model_devices, fsdp", [(8, 1, False), (4, 2, True)], ids=["8x1", "4x2-fsdp"])
def test_train_steps_match_one_device(data_devices, model_devices, fsdp):
    ref_losses, ref_params, initial, _ = trained(1, 1, False)
    losses, params, _, _ = trained(data_devices, model_devices, fsdp)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(initial)))
    assert moved > 3e-4, "the steps must change the parameters for the comparison to mean anything"
    for path, ref in jax.tree_util.tree_flatten_with_path(ref_params)[0]:
        got = dict(jax.tree_util.tree_flatten_with_path(params)[0])[path]
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6, err_msg=jax.tree_util.keystr(path))


def test_with_adams_default_eps_the_losses_match_and_only_noise_driven_parameters_move_apart():
    """With the configs' Adam eps = 1e-8, 8 devices train as one to the losses' 1e-5; the parameters agree except
    the few elements whose gradient is float32 rounding noise (module docstring): above all the biases of the
    encoder heads' last layers, which shift every anchor alike, so the zoning loss cannot see them. Adam divides
    that noise by its own magnitude, so each layout moves such an element by up to lr a step (Kingma & Ba, sec. 2.1),
    in its own direction. Bugs this catches: a drift that reaches the loss, drift beyond Adam's step, or drift
    spreading beyond a few elements (measured: 65 of 30 348 elements, 0.2 %, by up to 0.0039 = 0.86 of the bound
    after 3 steps). Reductions are checked at eps = 0.1 above, where Adam does not hide a gradient's scale."""
    config = tiny_config(eps=1e-8)
    ref_losses, ref_params, _, _ = trained(1, 1, False, eps=1e-8)
    losses, params, _, _ = trained(8, 1, False, eps=1e-8)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    steps_lr = sum(float(optim.warmup_schedule(config.optim.lr.encoder, config.optim.warmup_steps)(t)) for t in range(STEPS))
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    apart, moved, total = {}, 0, 0
    for path, ref in jax.tree_util.tree_flatten_with_path(ref_params)[0]:
        diff = np.abs(got[path] - ref)
        total, moved = total + diff.size, moved + int(np.sum(diff > 2e-6))
        if np.max(diff) > 2e-6:
            apart[jax.tree_util.keystr(path)] = float(np.max(diff))
    assert max(apart.values()) <= 2 * steps_lr, (apart, steps_lr)
    assert moved <= 0.01 * total, (moved, total, apart)
    biases = [f"['encoder']['{head}']['Dense_1']['bias']" for head in ref_params["encoder"] if head.startswith("head")]
    assert biases and all(apart.get(b, 0) > 0.5 * max(apart.values()) for b in biases), (biases, apart)


def test_fsdp_gradients_are_reduce_scattered_into_the_shards():
    """Under FSDP each device all-gathers the params inside the step's shard_map, so each gradient reaches the
    device's shard by one reduce-scatter. The bug this catches: gathering them before the shard_map (a reshard to
    replicated) made XLA all-reduce every whole gradient and slice the shard out of it, the whole gradient on
    every device, which FSDP is there to avoid (the step then held 1 reduce-scatter, the zoning kernel's own)."""
    config = tiny_config(4, 2, fsdp=True)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    step = train_state.make_train_step(built.task, built.optimizer, mesh, built.shardings)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), built.abstract_state,
                         built.shardings)  # fmt: skip
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=parallel.batch_sharding(mesh))
             for k, v in host_batches()[0].items()}  # fmt: skip
    with jax.set_mesh(mesh):
        text = step.lower(state, batch).compile().as_text()  # test_train_steps_match_one_device's program: a load
    sharded = [s for s in jax.tree.leaves(built.shardings.params) if parallel.DATA in s.spec]
    assert len(sharded) > 20
    assert text.count(" reduce-scatter(") >= len(sharded), text.count(" reduce-scatter(")


def test_fsdp_update_reduces_the_norm_and_a_non_finite_shard_over_every_device():
    """Under FSDP the update runs on each device's own shards, raveled there (`train_state._sharded_update`, the
    step's); the clip's norm and the finiteness check are its only reductions over the devices. Bugs this catches:
    a norm of one device's shards (each device clipping by its own scale: the step differs from the replicated
    one), and a NaN in one device's shard seen by that device alone (the others apply the step)."""
    config = configlib.override(tiny_config(4, 2, fsdp=True), **{"optim.grad_clip": 1.0})
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
    built = train.build(config, mesh)
    state = built.fresh_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    host = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), state.params)
    update = jax.jit(train_state._sharded_update(built.optimizer, mesh, built.shardings))

    def run(grads):
        with jax.set_mesh(mesh):
            return update(state.step, np.bool_(True), jax.device_put(grads, built.shardings.params), state.params,
                          state.opt_state, state.ema_params, state.ema_counts)  # fmt: skip

    result = run(host)
    norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in jax.tree.leaves(host)))
    assert float(result.metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5) and norm > 10 * config.optim.grad_clip
    assert bool(result.grads_finite)
    whole = optim.build(configlib.override(config, **{"mesh.fsdp": False}), tuple(state.params))
    params, opt_state = jax.tree.map(np.asarray, (state.params, state.opt_state))
    expected = whole.update(state.step, host, params, optim.relayout_opt_state(opt_state, jax.eval_shape(whole.init, params)),
                            params, state.ema_counts)  # fmt: skip
    for got, want in zip(jax.tree.leaves(result.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)

    split = [i for i, s in enumerate(jax.tree.leaves(built.shardings.params)) if parallel.DATA in s.spec]
    leaves, treedef = jax.tree.flatten(host)
    leaves[split[0]] = leaves[split[0]].copy()
    leaves[split[0]].flat[0] = np.nan  # in the first data device's shard only
    result = run(treedef.unflatten(leaves))
    assert not bool(result.grads_finite)
    for got, old in zip(jax.tree.leaves((result.params, result.opt_state, result.ema_params)),
                        jax.tree.leaves((state.params, state.opt_state, state.ema_params))):  # fmt: skip
        for shard, old_shard in zip(got.addressable_shards, old.addressable_shards):
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(old_shard.data))


def test_fsdp_stores_the_state_sharded():
    replicated_bytes = trained(1, 1, False)[3]
    fsdp_bytes = trained(4, 2, True)[3]
    # Over 4 data devices: a quarter of every divisible array, whole copies of the few small others.
    assert fsdp_bytes < 0.35 * replicated_bytes, (fsdp_bytes, replicated_bytes)


def test_class_accuracy_is_the_same_on_8_devices():
    """Case study 3's evaluator zones each eval batch across devices, with class weights and padding masks."""
    config = configlib.override(tiny_config(name="digits_joint"), **{"zoning.label_num_steps": 4})
    spec = {"splits": ("test",), "stds": (0.0, 1.0), "batch_size": 120}
    results = []
    for data_devices in (1, 8):
        mesh = parallel.make_mesh(data_devices)
        built = train.build(config, mesh)  # the same initial params on either mesh (one seed)
        evaluator = evaluators.build("class_accuracy", spec, task=built.task, config=config, workdir=None, mesh=mesh,
                                     writer=None)  # fmt: skip
        with jax.set_mesh(mesh):
            results.append(dict(evaluator.run(built.fresh_state(jax.random.key(0)).params, STEPS)))
    assert set(results[0]) == {"eval/accuracy", "eval/accuracy_with_class_weights", "eval/accuracy_std1",
                               "eval/accuracy_std1_with_class_weights"}  # fmt: skip
    for name, value in results[0].items():
        assert 0.0 <= value <= 1.0
        assert results[1][name] == pytest.approx(value, abs=1.5 / 360), name  # at most one of 360 tied samples


@pytest.mark.parametrize("saved_fsdp", [False, True], ids=["replicated-to-fsdp", "fsdp-to-replicated"])
def test_setup_converts_a_checkpoint_of_the_other_fsdp_layout(tmp_path, saved_fsdp):
    """The Adam state is raveled per module when replicated and kept as trees under FSDP; resuming with the other
    `mesh.fsdp` converts it (same values, this run's layout and shardings) instead of refusing the checkpoint.

    Each layout's run has the mesh of its `test_train_steps_match_one_device` case (8x1 replicated, 4x2 FSDP), so
    its train step is that test's program, loaded from the compilation cache instead of compiled again."""
    mesh = (4, 2) if saved_fsdp else (8, 1)
    config = configlib.override(tiny_config(*mesh, saved_fsdp), num_train_steps=1)
    train.train_and_evaluate(config, str(tmp_path))  # one step: Adam moments that are not zero
    saved = train.setup(config, str(tmp_path))
    resumed = train.setup(configlib.override(config, **{"mesh.fsdp": not saved_fsdp}), str(tmp_path))
    assert resumed.start_step == 1
    assert jax.tree.structure(resumed.state) == jax.tree.structure(resumed.shardings)
    for got, sharding in zip(jax.tree.leaves(resumed.state.opt_state), jax.tree.leaves(resumed.shardings.opt_state)):
        assert got.sharding == sharding
    trees = (saved if saved_fsdp else resumed).state.opt_state.inner_states
    vectors = (resumed if saved_fsdp else saved).state.opt_state.inner_states
    for module, tree_state in trees.items():
        adam_trees, adam_vectors = tree_state.inner_state[0], vectors[module].inner_state[0]
        assert int(adam_trees.count) == int(adam_vectors.count) == 1
        for moment in ("mu", "nu"):
            flat, _ = optim.flatten(jax.tree.map(np.asarray, getattr(adam_trees, moment)))  # gathered: explicit axes
            np.testing.assert_array_equal(flat[module], getattr(adam_vectors, moment)[module], err_msg=f"{module} {moment}")
    assert_same_arrays(resumed.state.params, saved.state.params)


def assert_same_arrays(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
