"""Rectified-flow samplers for an image decoder: Euler, adaptive RK45 (diffrax Dopri5), and their inverses.

Time runs from t = eps (noise x0) to t = 1 (data x1), x_t = t·x1 + (1−t)·x0, and the decoder predicts the
velocity x1 − x0. `velocity(t [B], x [B, H, W, C]) -> [B, H, W, C]` is the decoder with its latent and label
already bound. All samplers are jit-able; RK45 runs on device with diffrax's PID step-size controller, as the
official sampler runs scipy's RK45 (rtol = atol = 1e-5) on the host.
"""

from __future__ import annotations

from typing import Callable

import diffrax
import jax
import jax.numpy as jnp
from jax import lax

Velocity = Callable[[jax.Array, jax.Array], jax.Array]


def _euler(velocity: Velocity, x: jax.Array, t0: float, t1: float, num_steps: int) -> jax.Array:
    dt = (t1 - t0) / num_steps

    def step(x, i):
        t = jnp.full((x.shape[0],), t0 + i * dt, x.dtype)
        return x + dt * velocity(t, x), None

    x, _ = lax.scan(step, x, jnp.arange(num_steps, dtype=x.dtype))
    return x


def _rk45(velocity: Velocity, x: jax.Array, t0: float, t1: float, rtol: float, atol: float, max_steps: int):
    def field(t, y, _):
        return velocity(jnp.full((y.shape[0],), t, y.dtype), y)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        diffrax.Dopri5(),
        t0=t0,
        t1=t1,
        dt0=None,  # diffrax picks the first step as scipy's RK45 does
        y0=x,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    return solution.ys[-1]


SAMPLERS = ("euler", "rk45")


def integrate(velocity: Velocity, x: jax.Array, *, t0: float, t1: float, sampler: str, num_steps: int,
              rtol: float = 1e-5, atol: float = 1e-5) -> jax.Array:  # fmt: skip
    """x at t0 -> x at t1 with `sampler` ("euler": num_steps fixed steps; "rk45": adaptive Dopri5)."""
    if sampler == "euler":
        return _euler(velocity, x, t0, t1, num_steps)
    if sampler == "rk45":
        return _rk45(velocity, x, t0, t1, rtol, atol, max_steps=4096)
    raise ValueError(f"Unknown sampler {sampler!r}; use one of {SAMPLERS}.")


def interpolate_xt(x1: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = t·x1 + (1−t)·x0 with t [B] broadcast over the image axes."""
    t = t.reshape((-1,) + (1,) * (x1.ndim - 1))
    return t * x1 + (1.0 - t) * x0
