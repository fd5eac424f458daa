"""The adaptive RK45 sampler (diffrax Dopri5, used by every paper config's samples, FID and reconstructions)
against a closed-form ODE solution and against scipy's RK45 (the official sampler) on the same velocity field,
forward (noise at t = eps to data at t = 1) and inverse (back to eps), with the official tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate as scipy_integrate

from lzn_jax import parallel, samplers
from lzn_jax.evaluators import common

EPS = 1e-3  # config.rf.t_eps
RTOL = ATOL = 1e-5  # config.rf.rk45_rtol / rk45_atol, the official scipy RK45 tolerances
RATES = np.array([2.0, -1.5, 0.7], np.float32)  # one per row
OMEGA = 6.0


def linear_velocity(t, x):
    """dx/dt = k_b cos(ω t) x, row b: a stiff-free field whose step size must change along t."""
    return (RATES * jnp.cos(OMEGA * t))[:, None, None, None] * x


def linear_solution(x, t0, t1):
    """The closed form: x(t1) = x(t0) exp(k_b (sin ω t1 − sin ω t0) / ω)."""
    growth = np.exp(RATES * (np.sin(OMEGA * t1) - np.sin(OMEGA * t0)) / OMEGA)
    return x * growth[:, None, None, None]


def nonlinear_velocity(t, x):
    """A field with no closed form, for jnp and np alike: sin(3t + x) − x / 2."""
    xp = jnp if isinstance(x, jax.Array) else np
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.sin(3.0 * t + x) - 0.5 * x


def scipy_solve(velocity, x, t0, t1, method="RK45", tol=RTOL):
    """scipy's `method` on the flattened batch in float64, as the official sampler runs RK45 on the host."""
    shape = x.shape

    def field(t, y):
        return velocity(np.full((shape[0],), t), y.reshape(shape)).reshape(-1)

    out = scipy_integrate.solve_ivp(field, (t0, t1), np.asarray(x, np.float64).reshape(-1), method=method,
                                    rtol=tol, atol=tol)  # fmt: skip
    assert out.success
    return out.y[:, -1].reshape(shape)


def rk45(velocity, x, t0, t1):
    return np.asarray(jax.jit(lambda x: samplers.integrate(velocity, x, t0=t0, t1=t1, sampler="rk45", num_steps=0,
                                                           rtol=RTOL, atol=ATOL))(x))  # fmt: skip


def euler10(velocity, x, t0, t1):
    return np.asarray(samplers.integrate(velocity, x, t0=t0, t1=t1, sampler="euler", num_steps=10))


@pytest.fixture
def noise():
    return np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype(np.float32)


# Measured (max abs error, forward / inverse): against the closed form 5.0e-5 / 4.4e-5 (scipy's RK45: 3.6e-5 /
# 1.3e-5; Euler with 10 steps: 0.19 / 0.23); on the nonlinear field against DOP853 at tolerance 1e-12 5.3e-6 /
# 2.6e-5 (scipy's RK45: 4.1e-6 / 1.9e-5). The bound is 10 × atol: a sampler at rtol = atol = 1e-3, or one that
# fixed its steps, fails it.
BOUND = 10 * ATOL


@pytest.mark.parametrize("t0, t1", [(EPS, 1.0), (1.0, EPS)], ids=["forward", "inverse"])
def test_rk45_matches_the_closed_form_solution(noise, t0, t1):
    exact = linear_solution(noise.astype(np.float64), t0, t1)
    error = np.max(np.abs(rk45(linear_velocity, noise, t0, t1) - exact))
    assert error < BOUND
    assert np.max(np.abs(scipy_solve(linear_velocity, noise, t0, t1) - exact)) < BOUND  # the same bound holds upstream
    assert np.max(np.abs(euler10(linear_velocity, noise, t0, t1) - exact)) > 100 * BOUND  # the check can tell


@pytest.mark.parametrize("t0, t1", [(EPS, 1.0), (1.0, EPS)], ids=["forward", "inverse"])
def test_rk45_matches_scipy_rk45_on_the_same_field(noise, t0, t1):
    ours = rk45(nonlinear_velocity, noise, t0, t1)
    theirs = scipy_solve(nonlinear_velocity, noise, t0, t1)
    tight = scipy_solve(nonlinear_velocity, noise, t0, t1, method="DOP853", tol=1e-12)
    assert np.max(np.abs(ours - theirs)) < BOUND
    assert np.max(np.abs(ours - tight)) < BOUND


def test_inverse_of_forward_recovers_the_noise(noise):
    """Reconstruction by inversion (the reconstruction evaluator) returns to the noise within the tolerance."""
    data = rk45(nonlinear_velocity, noise, EPS, 1.0)
    assert np.max(np.abs(data - noise)) > 0.1  # the flow moved the points
    assert np.max(np.abs(rk45(nonlinear_velocity, data, 1.0, EPS) - noise)) < BOUND


def test_rk45_runs_inside_the_evaluators_shard_map(noise):
    """The FID, samples and reconstruction evaluators run RK45 per device through `common.sharded_fn`.

    Bug this catches: under shard_map's varying-axes type check, diffrax's while_loop carry starts with constants
    (not varying over `data`) that its body makes varying, and every gen_* paper config crashed at its first FID
    evaluation (`while_loop ... carry ... float32[...] vs float32[...]{V:data}`), after the train step had run;
    then, inside the loop's `jax.set_mesh`, at diffrax's status flags (`assert not hlo_sharding.is_manual()`).
    """
    mesh = parallel.make_mesh()

    def local(params, rates, x, *, axis_name):  # rates [B]: the rows' own field, sharded with them
        field = lambda t, y: (rates * jnp.cos(OMEGA * t))[:, None, None, None] * y  # noqa: E731
        return samplers.integrate(field, x, t0=EPS, t1=1.0, sampler="rk45", num_steps=0, rtol=RTOL, atol=ATOL)

    rows = parallel.batch_sharding(mesh)
    noise = np.concatenate([noise] * 8)[:8]  # 8 rows: whole rows on each of 1 or 8 devices (tests/multidevice)
    rates = np.resize(RATES, 8)
    with jax.set_mesh(mesh):  # as the training loop runs its evaluators
        out = common.sharded_fn(local, mesh, num_row_args=2)({}, jax.device_put(rates, rows), jax.device_put(noise, rows))
    growth = np.exp(rates * (np.sin(OMEGA * 1.0) - np.sin(OMEGA * EPS)) / OMEGA)  # linear_solution, per row
    exact = noise.astype(np.float64) * growth[:, None, None, None]
    assert np.max(np.abs(np.asarray(out) - exact)) < BOUND


def test_unknown_sampler_is_refused(noise):
    with pytest.raises(ValueError, match="rk45"):
        samplers.integrate(linear_velocity, noise, t0=EPS, t1=1.0, sampler="heun", num_steps=10)
