"""The optimizer and EMA follow the official trainers: per-module Adam, LinearLR warm-up, global clip, freezing."""

import pytest
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lzn_jax import optim


def make(modules=("encoder", "decoder"), *, lr=1e-2, warmup=4, clip=1.0, module_steps=None, ema=0.5, fsdp=False):
    """An Optimizer built by `optim.build` from the config keys `train.build` passes it."""
    config = ml_collections.ConfigDict(dict(
        optim=dict(lr={m: lr[m] if isinstance(lr, dict) else lr for m in modules}, warmup_steps=warmup, grad_clip=clip,
                   b1=0.9, b2=0.999, eps=1e-8),
        module_steps={m: (module_steps or {}).get(m, -1) for m in modules}, ema={m: ema for m in modules},
        mesh=dict(fsdp=fsdp)))  # fmt: skip
    return optim.build(config, modules)


def update(opt, grads, params, step=0, opt_state=None):
    """One `Optimizer.update` from a fresh Adam state (or `opt_state`), the EMA starting at `params`."""
    opt_state = opt.init(params) if opt_state is None else opt_state
    counts = {m: jnp.asarray(0) for m in params}
    return opt.update(jnp.asarray(step), grads, params, opt_state, params, counts)


def test_warmup_matches_torch_linear_lr():
    schedule = optim.warmup_schedule(2e-3, 4)
    # torch LinearLR(start_factor=1/4, end_factor=1, total_iters=4): factors 0.25, 0.4375, 0.625, 0.8125, 1, 1...
    expected = 2e-3 * np.array([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
    np.testing.assert_allclose([schedule(k) for k in range(6)], expected, rtol=1e-6)


def test_each_module_gets_its_own_learning_rate():
    opt = make(lr={"encoder": 1e-2, "decoder": 1e-4}, clip=0.0)
    params = {"encoder": jnp.zeros(3), "decoder": jnp.zeros(3)}
    new = update(opt, {"encoder": jnp.ones(3), "decoder": jnp.ones(3)}, params).params
    # Adam's first step moves every coordinate by lr·(1/warmup) (the normalised gradient is 1).
    np.testing.assert_allclose(-new["encoder"], 1e-2 / 4, rtol=1e-5)
    np.testing.assert_allclose(-new["decoder"], 1e-4 / 4, rtol=1e-5)


def test_global_norm_clip_over_enabled_modules_only():
    """The logged norm is over trainable modules: a frozen module's gradient (here the decoder's) is left out."""
    grads = {"encoder": jnp.full(4, 3.0), "decoder": jnp.full(4, 4.0)}
    params = {"encoder": jnp.zeros(4), "decoder": jnp.zeros(4)}
    np.testing.assert_allclose(update(make(), grads, params, step=5).metrics["grad_norm"], 10.0, rtol=1e-6)
    frozen_decoder = make(module_steps={"decoder": 3})
    np.testing.assert_allclose(update(frozen_decoder, grads, params, step=5).metrics["grad_norm"], 6.0, rtol=1e-6)
    np.testing.assert_allclose(update(frozen_decoder, grads, params, step=2).metrics["grad_norm"], 10.0, rtol=1e-6)


def test_frozen_module_keeps_params_adam_state_and_ema():
    opt = make(module_steps={"encoder": 3})
    params = {"encoder": jnp.ones(2), "decoder": jnp.ones(2)}
    grads = {"encoder": jnp.full(2, jnp.nan), "decoder": jnp.ones(2)}  # a frozen module's NaN does not count
    opt_state = opt.init(params)
    result = opt.update(jnp.asarray(5), grads, params, opt_state, {"encoder": jnp.zeros(2), "decoder": jnp.zeros(2)},
                        {"encoder": jnp.asarray(0), "decoder": jnp.asarray(0)})  # fmt: skip
    assert bool(result.grads_finite)
    assert float(result.metrics["encoder_enabled"]) == 0.0 and float(result.metrics["decoder_enabled"]) == 1.0
    np.testing.assert_array_equal(result.params["encoder"], params["encoder"])
    assert not np.allclose(result.params["decoder"], params["decoder"])
    np.testing.assert_array_equal(result.ema_params["encoder"], 0.0)
    assert int(result.ema_counts["encoder"]) == 0 and int(result.ema_counts["decoder"]) == 1
    frozen_before, frozen_after = opt_state.inner_states["encoder"], result.opt_state.inner_states["encoder"]
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after)):
        np.testing.assert_array_equal(a, b)


def test_a_non_finite_gradient_of_a_trainable_module_is_reported():
    params = {"encoder": jnp.ones(2), "decoder": jnp.ones(2)}
    grads = {"encoder": jnp.asarray([1.0, jnp.inf]), "decoder": jnp.ones(2)}
    assert not bool(update(make(), grads, params).grads_finite)


@pytest.mark.slow  # 11 s cold on 2 cores (fast-tier budget)
def test_raveled_and_tree_layouts_update_identically():
    """The replicated layout (one raveled vector per module) and FSDP's trees are the same optimizer.

    Bug this catches: a ravel order that differs from the tree order, or a mask or clip applied in one view only
    (errors of the size of the update). XLA's CPU kernels for a vector and for separate small arrays may round
    Adam's division differently, by one float32 ulp: hence rtol 1e-6 rather than equality.
    """
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=0)
    params = {"encoder": {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}, "decoder": {"c": -jnp.ones(4)}}
    grads = jax.tree.map(lambda x: jnp.cos(x) + 0.5, params)
    raveled, trees = make(module_steps={"decoder": 1}), make(module_steps={"decoder": 1}, fsdp=True)
    assert raveled.ravel and not trees.ravel
    for step in (0, 2):
        one, other = update(raveled, grads, params, step), update(trees, grads, params, step)
        for name in ("params", "ema_params", "ema_counts", "metrics"):
            jax.tree.map(close, getattr(one, name), getattr(other, name))
        jax.tree.map(close, optim.relayout_opt_state(one.opt_state, other.opt_state), other.opt_state)


def test_ema_warms_up_its_decay_per_module():
    ema = {"encoder": jnp.zeros(1), "decoder": jnp.zeros(1)}
    params = {"encoder": jnp.ones(1), "decoder": jnp.ones(1)}
    counts = {"encoder": jnp.asarray(0), "decoder": jnp.asarray(7)}
    enabled = {"encoder": jnp.asarray(True), "decoder": jnp.asarray(True)}
    new, new_counts = optim.ema_update(ema, params, counts, {"encoder": 0.999, "decoder": 0.5}, enabled)
    # first update: decay = min(0.999, 2/11); decoder (8th update): min(0.5, 9/18) = 0.5
    np.testing.assert_allclose(new["encoder"], 1 - 2 / 11, rtol=1e-6)
    np.testing.assert_allclose(new["decoder"], 0.5, rtol=1e-6)
    assert int(new_counts["encoder"]) == 1 and int(new_counts["decoder"]) == 8
    frozen = {"encoder": jnp.asarray(False), "decoder": jnp.asarray(True)}
    same, same_counts = optim.ema_update(ema, params, counts, {"encoder": 0.999, "decoder": 0.5}, frozen)
    np.testing.assert_array_equal(same["encoder"], 0.0)
    assert int(same_counts["encoder"]) == 0


def test_adam_matches_optax_adam_without_warmup():
    opt = make(("encoder",), lr=1e-3, warmup=0, clip=0.0)
    ref = optax.adam(1e-3)
    params = {"encoder": jnp.asarray([1.0, -2.0])}
    ours, theirs = opt.init(params), ref.init(params)
    p1 = p2 = params
    for step, g in enumerate(([0.3, -0.1], [1.0, 2.0], [-0.5, 0.0])):
        grads = {"encoder": jnp.asarray(g)}
        result = update(opt, grads, p1, step, ours)
        p1, ours = result.params, result.opt_state
        updates, theirs = ref.update(grads, theirs, p2)
        p2 = optax.apply_updates(p2, updates)
    np.testing.assert_allclose(p1["encoder"], p2["encoder"], rtol=1e-6)


def first_moments(opt_state, module):
    """Adam's first moment of `module` after one update: (1 − b1) × the gradient Adam received."""
    adam, _ = opt_state.inner_states[module].inner_state
    return adam.mu[module]


def test_clip_scales_the_gradient_adam_receives_by_clip_over_the_norm():
    """torch clip_grad_norm_: g × min(1, clip / (‖g‖ + 1e-6)), the norm over the enabled modules; a clip that
    scaled wrongly (or not at all) changes Adam's first moment, which holds 0.1 × the clipped gradient."""
    params = {"encoder": jnp.zeros(4), "decoder": jnp.zeros(4)}
    grads = {"encoder": jnp.full(4, 3.0), "decoder": jnp.full(4, 4.0)}  # global norm 10
    for clip, scale in ((1.0, 1.0 / (10.0 + 1e-6)), (5.0, 5.0 / (10.0 + 1e-6)), (20.0, 1.0), (0.0, 1.0)):
        result = update(make(clip=clip), grads, params)
        np.testing.assert_allclose(result.metrics["grad_norm"], 10.0, rtol=1e-6)
        np.testing.assert_allclose(first_moments(result.opt_state, "encoder"), 0.1 * 3.0 * scale, rtol=1e-5)
        np.testing.assert_allclose(first_moments(result.opt_state, "decoder"), 0.1 * 4.0 * scale, rtol=1e-5)
    # A frozen decoder is left out of the norm: the encoder's gradient alone (norm 6) is clipped to 1.
    result = update(make(module_steps={"decoder": 0}), grads, params)
    np.testing.assert_allclose(result.metrics["grad_norm"], 6.0, rtol=1e-6)
    np.testing.assert_allclose(first_moments(result.opt_state, "encoder"), 0.1 * 3.0 / (6.0 + 1e-6), rtol=1e-5)
