"""The optimizer and EMA follow the official trainers: per-module Adam, LinearLR warm-up, global clip, freezing."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lzn_jax import optim


def optim_config(**lr):
    return ml_collections.ConfigDict(dict(lr=lr, warmup_steps=4, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8))


def test_warmup_matches_torch_linear_lr():
    schedule = optim.warmup_schedule(2e-3, 4)
    # torch LinearLR(start_factor=1/4, end_factor=1, total_iters=4): factors 0.25, 0.4375, 0.625, 0.8125, 1, 1...
    expected = 2e-3 * np.array([0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0])
    np.testing.assert_allclose([schedule(k) for k in range(6)], expected, rtol=1e-6)


def test_each_module_gets_its_own_learning_rate():
    opt = optim.make_optimizer(optim_config(encoder=1e-2, decoder=1e-4), ("encoder", "decoder"))
    params = {"encoder": jnp.zeros(3), "decoder": jnp.zeros(3)}
    state = opt.init(params)
    grads = {"encoder": jnp.ones(3), "decoder": jnp.ones(3)}
    enabled = {"encoder": jnp.asarray(True), "decoder": jnp.asarray(True)}
    new, _, _ = optim.apply(opt, grads, state, params, enabled, grad_clip=0.0)
    # Adam's first step moves every coordinate by lr·(1/warmup) (the normalised gradient is 1).
    np.testing.assert_allclose(-new["encoder"], 1e-2 / 4, rtol=1e-5)
    np.testing.assert_allclose(-new["decoder"], 1e-4 / 4, rtol=1e-5)


def test_global_norm_clip_over_enabled_modules_only():
    grads = {"encoder": jnp.full(4, 3.0), "decoder": jnp.full(4, 4.0)}
    both = {"encoder": jnp.asarray(True), "decoder": jnp.asarray(True)}
    np.testing.assert_allclose(optim.global_norm(grads, both), 10.0, rtol=1e-6)
    only_encoder = {"encoder": jnp.asarray(True), "decoder": jnp.asarray(False)}
    np.testing.assert_allclose(optim.global_norm(grads, only_encoder), 6.0, rtol=1e-6)


def test_frozen_module_keeps_params_and_adam_state():
    opt = optim.make_optimizer(optim_config(encoder=1e-2, decoder=1e-2), ("encoder", "decoder"))
    params = {"encoder": jnp.ones(2), "decoder": jnp.ones(2)}
    state = opt.init(params)
    enabled = optim.trainable(jnp.asarray(5), {"encoder": 3, "decoder": -1}, ("encoder", "decoder"))
    assert not bool(enabled["encoder"]) and bool(enabled["decoder"])
    grads = {"encoder": jnp.ones(2), "decoder": jnp.ones(2)}
    new_params, new_state, _ = optim.apply(opt, grads, state, params, enabled, grad_clip=1.0)
    np.testing.assert_array_equal(new_params["encoder"], params["encoder"])
    assert not np.allclose(new_params["decoder"], params["decoder"])
    frozen_before, frozen_after = state.inner_states["encoder"], new_state.inner_states["encoder"]
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(frozen_after)):
        np.testing.assert_array_equal(a, b)


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
    opt = optim.make_optimizer(ml_collections.ConfigDict(dict(lr={"encoder": 1e-3}, warmup_steps=0, grad_clip=0.0,
                                                              b1=0.9, b2=0.999, eps=1e-8)), ("encoder",))
    ref = optax.adam(1e-3)
    params = {"encoder": jnp.asarray([1.0, -2.0])}
    ours, theirs = opt.init(params), ref.init(params)
    p1 = p2 = params
    for g in ([0.3, -0.1], [1.0, 2.0], [-0.5, 0.0]):
        grads = {"encoder": jnp.asarray(g)}
        p1, ours, _ = optim.apply(opt, grads, ours, p1, {"encoder": jnp.asarray(True)}, grad_clip=0.0)
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
    opt = optim.make_optimizer(optim_config(encoder=1e-2, decoder=1e-2), ("encoder", "decoder"))
    params = {"encoder": jnp.zeros(4), "decoder": jnp.zeros(4)}
    grads = {"encoder": jnp.full(4, 3.0), "decoder": jnp.full(4, 4.0)}  # global norm 10
    both = {"encoder": jnp.asarray(True), "decoder": jnp.asarray(True)}
    for clip, scale in ((1.0, 1.0 / (10.0 + 1e-6)), (5.0, 5.0 / (10.0 + 1e-6)), (20.0, 1.0), (0.0, 1.0)):
        _, state, norm = optim.apply(opt, grads, opt.init(params), params, both, grad_clip=clip)
        np.testing.assert_allclose(norm, 10.0, rtol=1e-6)
        np.testing.assert_allclose(first_moments(state, "encoder"), 0.1 * 3.0 * scale, rtol=1e-5)
        np.testing.assert_allclose(first_moments(state, "decoder"), 0.1 * 4.0 * scale, rtol=1e-5)
    # A frozen decoder is left out of the norm: the encoder's gradient alone (norm 6) is clipped to 1.
    only_encoder = {"encoder": jnp.asarray(True), "decoder": jnp.asarray(False)}
    _, state, norm = optim.apply(opt, grads, opt.init(params), params, only_encoder, grad_clip=1.0)
    np.testing.assert_allclose(norm, 6.0, rtol=1e-6)
    np.testing.assert_allclose(first_moments(state, "encoder"), 0.1 * 3.0 / (6.0 + 1e-6), rtol=1e-5)
