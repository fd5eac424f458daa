"""The latent zoning kernel: closed-form flow matching between a mixture of anchors and N(0, I).

A batch of anchors `a_1..a_N` (the encoder outputs) defines a mixture of Diracs; the rectified-flow ODE between
that mixture and the standard Gaussian has a closed-form velocity. At time t (t = 0: an anchor, t = 1: noise),

    w_j(x, t) ∝ weight_j · exp(-||x - (1 - t) a_j||² / (2 t²)),        v(x, t) = (x - Σ_j w_j a_j) / t,

which is attention with queries `x` and keys/values `a`. `latents` integrates from t≈0 to 1 (anchor → its latent
zone); `assign` integrates back from t = 1 and reports, per step, the log assignment probabilities
`log w_j(x, t)`: how firmly a latent sits in anchor j's zone.

The solvers reproduce the official `EulerLatentFlow` and `DPMSolverLatentFlow` (multistep, order 3,
time-uniform, lower-order final steps, eps_start = eps_end = 1e-3) step for step; docs/zoning.md has the maths
of what follows.

- No [B, N, D] tensor: the logits come from one matmul, `(1-t)/t²·x·a_j − (1-t)²/(2t²)·||a_j||² + log weight_j`
  (the per-row ||x||² term cancels in the softmax), computed around the anchors' mean.
- `_attend` is a custom-VJP attention tiled over query rows: each tile's [rows, N] logits are computed,
  normalised and used at once, and recomputed in the backward pass. Its residuals are only the query and the
  dominant anchor index, so an S-step flow keeps O(S·B·D) for its backward, never a [B, N] matrix per step,
  and needs no remat; a step's peak is one [rows, N] tile (64 MiB by default).
- Float32 accuracy. Near t = 0 the weights are one-hot and the velocity divides by t ≈ 1e-4, so the posterior
  mean is returned as `dominant anchor + Σ_{j≠dominant} w_j (a_j − a_dominant)` (exact zero remainder when
  one-hot), and the forward flow integrates the noise coordinate z = (x − (1−t)·point)/t instead of x. z starts
  at the prior itself rather than at a point that float32 cannot tell from the anchor, and the Euler and DPM
  updates are rewritten for z exactly (same iterates in exact arithmetic).
- Matmuls run at `Precision.HIGHEST`: the 1/t² scale would turn TPU's default bf16 passes into noise.

Input checks. Shapes, ranks and dtypes are checked on every call, traced or not, before anything is computed.
Values are checked only when they are concrete (eager calls): NaN/inf in anchors, latents, prior or points,
negative/non-finite/all-zero weights, and targets outside [0, N) raise ValueError. Under jit, vmap or grad
checking values would need a host sync, so they are not checked; instead such inputs make the outputs that
depend on them non-finite (a bad anchor or weight: every row; a bad latent, prior row or target: that row),
never a finite wrong number: log-probabilities NaN, points NaN (or inf, where an inf input passes through).
The same holds for finite inputs too large for the float32 logits (about |x| > 1e15): they overflow to NaN,
in eager calls too. bfloat16/float16 inputs are computed and returned in float32,
float64 ones in float64 when x64 is enabled; integer, bool and complex arrays raise TypeError.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOLVERS = ("euler", "dpm_solver++")
EULER_EPS = 1e-4  # official EulerLatentFlow: forward flow starts at t = eps
DPM_EPS = 1e-3  # official DPMSolverLatentFlow: eps_start = eps_end
DPM_ORDER = 3
TILE_ENTRIES = 2**24  # default tile: [rows, N] logits of 64 MiB in float32 (B = N = 4096 runs in one tile)
_PRECISION = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------------------------
# The attention primitive, tiled over query rows.
#
# Each tile holds the full logit rows of its queries ([rows, N]), so the softmax of a row is normalised from
# one computation of its logits, in the forward and again, self-consistently, in the backward pass. Logits
# near t = 0 carry 1/t² (10⁸) and an absolute rounding error of that order; the backward's cancellation
# P·(dP − δ) is exact only if P, dP and δ come from the same rounded logits — the reason the tiles run over
# queries, not anchors (an online log-sum-exp over anchor tiles needs a second recomputation pass whose
# rounding need not match the first).
# --------------------------------------------------------------------------------------------------------------


def _scores(q, keys, log_w, t):
    """Logits up to a per-row constant. q [B, D], keys [N, D] (centred anchors), log_w [N], t scalar -> [B, N]."""
    alpha = 1.0 - t
    beta = 1.0 / (t * t)
    qk = jnp.matmul(q, keys.T, precision=_PRECISION)
    k_sq = jnp.sum(keys * keys, axis=-1)
    distance_terms = (beta * alpha) * qk - (0.5 * beta * alpha * alpha) * k_sq
    # Finite inputs whose terms overflow (anchors of size 1e16 at t = 1e-3 in float32) would give an anchor's
    # logit −inf, silently dropping its zone from the softmax: its own latent then follows another anchor to a
    # finite, wrong point. Such logits become NaN, like a non-finite input (log_w's −inf, weight 0, stays).
    return jnp.where(jnp.isfinite(distance_terms), distance_terms, jnp.nan) + log_w


def _pick(s, index):
    """s[i, index[i]]: [B, N], [B] -> [B]."""
    return jnp.take_along_axis(s, index[:, None], axis=1)[:, 0]


def _without_dominant(p, dominant):
    """p [B, N] with each row's dominant column zeroed."""
    return jnp.where(jnp.arange(p.shape[1])[None, :] == dominant[:, None], jnp.zeros_like(p), p)


def _rows_forward(q, a, center, log_w, t, targets):
    """One tile of query rows against all anchors: (rest, lse, log_p_target, dominant), see `_attend`."""
    s = _scores(q, a - center, log_w, t)
    dominant = jnp.argmax(s, axis=-1).astype(jnp.int32)
    s_max = _pick(s, dominant)
    shifted = s - s_max[:, None]  # <= 0, with an exact 0 at the dominant column
    log_norm = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))  # in [0, log N]
    p_other = _without_dominant(jnp.exp(shifted - log_norm[:, None]), dominant)
    rest = jnp.matmul(p_other, a, precision=_PRECISION) - jnp.sum(p_other, -1, keepdims=True) * a[dominant]
    # The target's log-probability from the shifted logits: s_T − lse of the raw logits subtracts two numbers of
    # the logits' size (10⁴ and more near t = 0, or far from the anchors) and keeps only their float32 rounding.
    return rest, s_max + log_norm, _pick(shifted, targets) - log_norm, dominant


def _rows_backward(q, a, center, log_w, t, targets, dominant, d_rest, d_lse, d_lp):
    """Gradients of one tile of query rows: (d_q [rows, D], d_a [N, D], d_log_w [N]).

    rest_i = Σ_{j≠k} P_ij (a_j − a_k) (k = dominant_i) and the logits s_ij = βα q_i·c_j − βα²/2 ‖c_j‖² + log w_j
    (c = a − center, α = 1 − t, β = 1/t²). With dP_ij = d_rest_i·a_j and δ_i = Σ_j P_ij dP_ij, the logit
    gradient is P_ij (dP_ij − δ_i + d_lse_i − d_lp_i) + [j = T_i] d_lp_i (log p_T = s_T − lse); the value
    gradient of rest leaves the dominant column out instead of cancelling it (P·d_rest − d_rest), which near
    one-hot P is exact.
    """
    alpha = 1.0 - t
    beta = 1.0 / (t * t)
    keys = a - center
    s = _scores(q, keys, log_w, t)
    p = jnp.exp(s - jax.nn.logsumexp(s, axis=-1)[:, None])
    d_p = jnp.matmul(d_rest, a.T, precision=_PRECISION)
    delta = jnp.sum(p * d_p, axis=-1)
    d_s = p * (d_p - delta[:, None] + (d_lse - d_lp)[:, None])
    d_s = d_s.at[jnp.arange(q.shape[0]), targets].add(d_lp)
    col = jnp.sum(d_s, axis=0)
    p_other = _without_dominant(p, dominant)
    d_q = (beta * alpha) * jnp.matmul(d_s, keys, precision=_PRECISION)
    d_a = (
        jnp.matmul(p_other.T, d_rest, precision=_PRECISION)
        + (beta * alpha) * jnp.matmul(d_s.T, q, precision=_PRECISION)
        - (beta * alpha * alpha) * col[:, None] * keys
    )
    d_a = d_a.at[dominant].add(-jnp.sum(p_other, axis=-1)[:, None] * d_rest)
    return d_q, d_a, col


def _row_tiles(x, rows):
    """[B, ...] -> [num_tiles, rows, ...], zero-padded; padding rows are sliced off by the caller."""
    pad = -x.shape[0] % rows
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    return x.reshape((-1, rows) + x.shape[1:])


def _untile(x, b):
    return x.reshape((-1,) + x.shape[2:])[:b]


def _attend_forward(q, a, center, log_w, t, targets, block_size):
    b = q.shape[0]
    if b <= block_size:
        return _rows_forward(q, a, center, log_w, t, targets)
    outs = lax.map(lambda rows: _rows_forward(*rows[:1], a, center, log_w, t, rows[1]),
                   (_row_tiles(q, block_size), _row_tiles(targets, block_size)))  # fmt: skip
    return tuple(_untile(x, b) for x in outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend(q, a, center, log_w, t, targets, block_size):
    """Posterior of the anchors at one point of the flow, tiled over query rows.

    Args:
      q: [B, D] queries in centred coordinates (x − (1−t)·center). a: [N, D] anchors. center: [D] constant the
        logits are centred on. log_w: [N] log anchor weights (-inf for weight 0). t: scalar time in (0, 1].
        targets: [B] int anchor index per row. block_size: query rows per tile (static).
    Returns:
      rest [B, D] = Σ_j w_ij (a_j − a_dominant_i)  (so the posterior mean is a[dominant] + rest),
      lse [B] = log Σ_j exp(s_ij), log_p_target [B] = log w_{i, targets_i}, dominant [B] = argmax_j s_ij
      (int32). s comes from `_scores`; lse and log_p_target from the same logits, shifted by their maximum
      (separately recomputed logits would differ by the matmul's rounding, scaled by 1/t²).
    """
    return _attend_forward(q, a, center, log_w, t, targets, block_size)


def _attend_fwd(q, a, center, log_w, t, targets, block_size):
    outputs = _attend_forward(q, a, center, log_w, t, targets, block_size)
    return outputs, (q, a, center, log_w, t, targets, outputs[3])


def _attend_bwd(block_size, residuals, cotangents):
    q, a, center, log_w, t, targets, dominant = residuals
    d_rest, d_lse, d_lp, _ = cotangents
    b = q.shape[0]
    if b <= block_size:
        d_q, d_a, d_lw = _rows_backward(q, a, center, log_w, t, targets, dominant, d_rest, d_lse, d_lp)
        return d_q, d_a, None, d_lw, None, None

    def tile(carry, rows):
        d_a, d_lw = carry
        dq_t, da_t, dlw_t = _rows_backward(rows[0], a, center, log_w, t, *rows[1:])
        return (d_a + da_t, d_lw + dlw_t), dq_t

    # Padding rows carry zero cotangents, so they add nothing to the anchors' gradients.
    tiles = tuple(_row_tiles(x, block_size) for x in (q, targets, dominant, d_rest, d_lse, d_lp))
    (d_a, d_lw), d_q = lax.scan(tile, (jnp.zeros_like(a), jnp.zeros_like(log_w)), tiles)
    return _untile(d_q, b), d_a, None, d_lw, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


# --------------------------------------------------------------------------------------------------------------
# Zones: the mixture a flow is taken against, and one evaluation of its posterior.
# --------------------------------------------------------------------------------------------------------------


class _Zones(NamedTuple):
    anchors: jax.Array  # [N, D]
    center: jax.Array  # [D] constant the logits are centred on
    log_w: jax.Array  # [N]
    block_size: int


class _Posterior(NamedTuple):
    index: jax.Array  # [B] int32 index k of the most probable anchor
    dominant: jax.Array  # [B, D] a_k
    rest: jax.Array  # [B, D] Σ_j w_j (a_j − a_k): posterior mean = dominant + rest
    lse: jax.Array  # [B]
    log_p_target: jax.Array  # [B] log w of the target anchor


def _make_zones(anchors, weights, block_size) -> _Zones:
    # Logits are computed around the anchors' mean: the flow is translation-equivariant (x − (1−t)a is unchanged
    # when a shifts by c and x by (1−t)c), so the centre may be a constant (stop_gradient keeps derivatives
    # exact), and the matmul's cancellation error scales with the anchors' spread rather than their offset.
    center = lax.stop_gradient(jnp.mean(anchors, axis=0))
    if weights is None:
        log_w = jnp.zeros(anchors.shape[:1], anchors.dtype)
    else:
        positive = weights > 0
        # Double `where` keeps the gradient finite for weight-0 anchors (their probability is exactly 0).
        log_w = jnp.where(positive, jnp.log(jnp.where(positive, weights, 1.0)), -jnp.inf).astype(anchors.dtype)
        # Negative, NaN or infinite weights (unchecked under jit) poison the mixture visibly instead of being
        # read as weight 0 or as a single anchor.
        log_w = jnp.where((weights >= 0) & jnp.isfinite(weights), log_w, jnp.nan)
    return _Zones(anchors, center, log_w, block_size)


def _query(zones: _Zones, x, t):
    return x - (1.0 - t) * zones.center


def _vary_like(x, ref):
    """Inside shard_map, marks x as varying over the mesh axes `ref` varies over.

    The gathered anchors are the same on every device, but their cotangent from `_attend` is per-device; the
    cast's transpose sums it over devices, which is exactly the anchors' gradient.
    """
    missing = tuple(sorted(_varying_axes(ref) - _varying_axes(x)))
    return lax.pcast(x, missing, to="varying") if missing else x


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.9; earlier releases call it `vma`
    return frozenset(manual.varying) if manual is not None else frozenset(getattr(aval, "vma", ()))


def _evaluate(zones: _Zones, x, t, targets) -> _Posterior:
    q = _query(zones, x, t)
    anchors, log_w = _vary_like(zones.anchors, q), _vary_like(zones.log_w, q)
    rest, lse, log_p_target, dominant = _attend(q, anchors, zones.center, log_w, t, targets, zones.block_size)
    return _Posterior(dominant, anchors[dominant], rest, lse, log_p_target)


def _log_probs_all(zones: _Zones, x, t):
    """log w_ij for every anchor: [B, N], normalised from one computation of the logits."""
    return jax.nn.log_softmax(_scores(_query(zones, x, t), zones.anchors - zones.center, zones.log_w, t), axis=-1)


# --------------------------------------------------------------------------------------------------------------
# Time grids and solver coefficients (static numpy, float64).
# --------------------------------------------------------------------------------------------------------------


def _euler_forward_times(num_steps):
    """t_0..t_S (S + 1 points, from eps to 1) and the step size."""
    step = (1.0 - EULER_EPS) / num_steps
    return EULER_EPS + step * np.arange(num_steps + 1), step


def _euler_reverse_times(num_steps):
    step = 1.0 / num_steps
    return 1.0 - step * np.arange(num_steps + 1), step


class _DpmPlan(NamedTuple):
    """Times t_0..t_S and per-update coefficients [S] of multistep DPM-Solver++ (update k goes t_{k-1} → t_k)."""

    times: np.ndarray
    ratio: np.ndarray  # t_k / t_{k-1} (sigma ratio)
    c_m0: np.ndarray  # coefficient of the newest data prediction
    inv_r0: np.ndarray
    inv_r1: np.ndarray
    mix: np.ndarray  # r0 / (r0 + r1)
    inv_r01: np.ndarray  # 1 / (r0 + r1)
    c_d10: np.ndarray  # order-2 coefficient of D1_0
    c_d1: np.ndarray  # order-3 coefficients of D1 and D2
    c_d2: np.ndarray


def _dpm_order(k, num_steps):
    if k < DPM_ORDER:
        return k  # warm-up with lower orders, as the official multistep solver
    if num_steps < 10:
        return min(DPM_ORDER, num_steps + 1 - k)  # lower_order_final
    return DPM_ORDER


def _dpm_plan(num_steps, t_start, t_end) -> _DpmPlan:
    times = np.linspace(t_start, t_end, num_steps + 1)
    lam = np.log(1.0 / times - 1.0)  # half log-SNR of alpha_t = 1 - t, sigma_t = t
    cols = {k: np.zeros(num_steps) for k in _DpmPlan._fields if k != "times"}
    for k in range(1, num_steps + 1):
        order, i = _dpm_order(k, num_steps), k - 1
        h = lam[k] - lam[k - 1]
        phi1 = np.expm1(-h)
        alpha_t = 1.0 - times[k]
        cols["ratio"][i] = times[k] / times[k - 1]
        cols["c_m0"][i] = -alpha_t * phi1
        if order >= 2:
            r0 = (lam[k - 1] - lam[k - 2]) / h
            cols["inv_r0"][i] = 1.0 / r0
        if order == 2:
            cols["c_d10"][i] = -0.5 * alpha_t * phi1
        if order == 3:
            r1 = (lam[k - 2] - lam[k - 3]) / h
            phi2 = phi1 / h + 1.0
            cols["inv_r1"][i] = 1.0 / r1
            cols["mix"][i] = r0 / (r0 + r1)
            cols["inv_r01"][i] = 1.0 / (r0 + r1)
            cols["c_d1"][i] = alpha_t * phi2
            cols["c_d2"][i] = -alpha_t * (phi2 / h - 0.5)
    return _DpmPlan(times=times, **cols)


def _dpm_increment(history, coef):
    """The data-prediction part of a multistep DPM-Solver++ update; history = (newest, older, oldest) [B, D].

    The update is x_t = ratio·x_s + increment(M). It is linear in the M's and vanishes on constant M's, so it
    applies equally to residuals M − point (forward flow in the noise coordinate).
    """
    m0, m1, m2 = history
    d1_0 = (m0 - m1) * coef["inv_r0"]
    d1_1 = (m1 - m2) * coef["inv_r1"]
    d1 = d1_0 + coef["mix"] * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) * coef["inv_r01"]
    return coef["c_m0"] * m0 + coef["c_d10"] * d1_0 + coef["c_d1"] * d1 + coef["c_d2"] * d2


def _coefficients(plan: _DpmPlan, dtype):
    return {k: jnp.asarray(v, dtype) for k, v in plan._asdict().items()}


def _scan_dpm(evaluate, update, state0, plan: _DpmPlan, dtype):
    """Multistep DPM-Solver++ skeleton: S evaluations (the last update needs none).

    evaluate(state, t) -> (model output, record); update(state, history, coef) -> state.
    """
    coefs = _coefficients(plan, dtype)
    m0, out0 = evaluate(state0, coefs["times"][0])
    steps = {k: v[:-1] for k, v in coefs.items() if k != "times"}
    steps["times"] = coefs["times"][1:-1]
    last = {k: v[-1] for k, v in coefs.items()}
    def body(carry, coef):
        state, history = carry
        state = update(state, history, coef)
        m, out = evaluate(state, coef["times"])
        return (state, (m, history[0], history[1])), out

    (state, history), outs = lax.scan(body, (state0, (m0, m0, m0)), steps)
    state = update(state, history, last)
    outs = jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), out0, outs)
    return state, outs


# --------------------------------------------------------------------------------------------------------------
# Flows.
# --------------------------------------------------------------------------------------------------------------


def _forward_flow(zones, points, prior, own, *, solver, num_steps):
    """points → latents, integrating z = (x − (1−t)·points)/t, which starts at the prior exactly.

    Euler: x' = x + h (x − m)/t  ⇔  z' = z + h/(t·t') · (points − m).
    DPM-Solver++: x' = (t'/t) x + inc(M)  ⇔  z' = z + inc(M − points)/t'   (inc vanishes on constants).
    `own` [B]: when the points are the anchors themselves, their (global) anchor indices.
    """
    dtype = points.dtype
    targets = jnp.zeros(points.shape[:1], jnp.int32)

    def residual(z, t):  # posterior mean − point, without cancelling two nearly equal vectors
        post = _evaluate(zones, (1.0 - t) * points + t * z, t, targets)
        if own is None:
            return (post.dominant - points) + post.rest
        # Both terms indexed from one array: in the backward their ±(h/t²)-scaled cotangents meet in one
        # scatter and cancel exactly when the dominant anchor is the point's own one, rather than after other
        # contributions (or a cross-device sum) have been added to either.
        anchors = _vary_like(zones.anchors, z)
        return (anchors[post.index] - anchors[own]) + post.rest

    if solver == "euler":
        times, step = _euler_forward_times(num_steps)
        times = jnp.asarray(times, dtype)
        def body(z, t_pair):
            t, t_next = t_pair
            return z - (step / (t * t_next)) * residual(z, t), None

        z, _ = lax.scan(body, prior, (times[:-1], times[1:]))
        t_end = times[-1]
    else:
        plan = _dpm_plan(num_steps, DPM_EPS, 1.0 - DPM_EPS)
        z, _ = _scan_dpm(
            lambda z, t: (residual(z, t), None),
            lambda z, history, coef: z + _dpm_increment(history, coef) / coef["times"],
            prior,
            plan,
            dtype,
        )
        t_end = jnp.asarray(plan.times[-1], dtype)
    return (1.0 - t_end) * points + t_end * z


def _reverse_flow(zones, x0, targets, record, *, solver, num_steps):
    """latents → end points, recording `record(x, t, posterior)` at every evaluation."""
    dtype = x0.dtype

    def evaluate(x, t):
        post = _evaluate(zones, x, t, targets)
        return post, record(x, t, post)

    if solver == "euler":
        # x' = x − h·(x − m)/t written as (t'/t)·x + (h/t)·m: the same step, but the last one (t' = 0) lands on
        # the posterior mean m exactly, where x − (x − m) would keep the rounding of x (|x| ≫ |m| for far latents).
        times, step = _euler_reverse_times(num_steps)
        keep = np.append(times[1:-1] / times[:-2], 0.0)  # t'/t, exactly 0 for the last step
        coef = {"t": times[:-1], "keep": keep, "move": step / times[:-1]}

        def body(x, c):
            post, out = evaluate(x, c["t"])
            return c["keep"] * x + c["move"] * (post.dominant + post.rest), out

        return lax.scan(body, x0, {k: jnp.asarray(v, dtype) for k, v in coef.items()})

    plan = _dpm_plan(num_steps, 1.0 - DPM_EPS, DPM_EPS)

    def evaluate_mean(x, t):
        post, out = evaluate(x, t)
        return post.dominant + post.rest, out

    return _scan_dpm(
        evaluate_mean,
        lambda x, history, coef: coef["ratio"] * x + _dpm_increment(history, coef),
        x0,
        plan,
        dtype,
    )


# --------------------------------------------------------------------------------------------------------------
# Validation: every error names the argument, what was expected and how to fix it.
# --------------------------------------------------------------------------------------------------------------


def _check_matrix(name, x, dim=None):
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 2:
        got = f"shape {shape}" if shape is not None else f"a {type(x).__name__}"
        raise ValueError(f"`{name}` must be a 2-D array [rows, latent_dim]; got {got}. Pass a jax or numpy array.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array; got dtype {x.dtype}. Cast it with .astype(jnp.float32)."
        )
    if dim is not None and shape[1] != dim:
        raise ValueError(
            f"`{name}` has latent dimension {shape[1]} but `anchors` has {dim}: both must live in the same latent space."
        )
    if shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {shape}); the flow needs at least one row.")
    if shape[1] == 0:
        raise ValueError(f"`{name}` has latent dimension 0 (shape {shape}); latents need at least one coordinate.")
    _check_finite(name, x)


def concrete(x) -> bool:
    """Whether x holds values here (not None, not a tracer under jit/vmap/grad), so checking them costs no
    traced sync. The one test of "may values be checked" (also `lzn_jax.api`'s input checks)."""
    return x is not None and not isinstance(x, jax.core.Tracer)


def _check_finite(name, x):
    if not concrete(x):
        return
    bad = ~np.isfinite(np.asarray(x))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` contains {int(bad.sum())} NaN or inf entries (the first at index {first}); the flow needs "
            "finite values. Under jit this is not checked: non-finite inputs make the outputs that depend on them NaN."
        )


def _check_common(anchors, num_steps, solver, block_size):
    _check_matrix("anchors", anchors)
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; use one of {SOLVERS}.")
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive Python int (it is static under jit); got {num_steps!r}.")
    if solver == "dpm_solver++" and num_steps < DPM_ORDER:
        raise ValueError(
            f"solver='dpm_solver++' is a multistep order-{DPM_ORDER} solver and needs num_steps >= {DPM_ORDER}; "
            f"got {num_steps}. Use more steps or solver='euler'."
        )
    if block_size is not None and (
        not isinstance(block_size, (int, np.integer)) or isinstance(block_size, bool) or block_size < 1
    ):
        raise ValueError(f"`block_size` must be a positive int or None; got {block_size!r}.")


def _check_weights(weights, anchors):
    if weights is None:
        return
    if getattr(weights, "ndim", None) != 1 or weights.shape[0] != anchors.shape[0]:
        raise ValueError(
            f"`weights` must have shape [{anchors.shape[0]}] (one weight per anchor); got "
            f"{getattr(weights, 'shape', type(weights).__name__)}."
        )
    if not (jnp.issubdtype(weights.dtype, jnp.floating) or jnp.issubdtype(weights.dtype, jnp.integer)):
        raise TypeError(f"`weights` must be a real (float or int) array; got dtype {weights.dtype}.")
    if concrete(weights):
        values = np.asarray(weights, np.float64)
        bad = ~(np.isfinite(values) & (values >= 0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"`weights` must be finite and non-negative; {int(bad.sum())} are not, the first weights[{first}] = "
                f"{values[first]}. Under jit this is not checked: such weights make the outputs NaN."
            )
        if not np.any(values > 0):
            raise ValueError("`weights` are all zero: at least one anchor must have a positive weight.")


def _check_targets(targets, num_rows, num_anchors):
    if getattr(targets, "shape", None) != (num_rows,) or not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(
            f"`targets` must be an int array of shape [{num_rows}] (one anchor index per latent); got "
            f"{getattr(targets, 'dtype', type(targets))} {getattr(targets, 'shape', None)}."
        )
    if concrete(targets):
        values = np.asarray(targets)
        outside = (values < 0) | (values >= num_anchors)
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"`targets` must be anchor indices in [0, {num_anchors}); {int(outside.sum())} are not, the first "
                f"targets[{first}] = {values[first]}. Under jit this is not checked: those rows' log-probs are NaN."
            )


def _resolve_block_size(block_size, num_anchors):
    """Query rows per tile: a [rows, N] tile of logits has about TILE_ENTRIES entries."""
    if block_size is not None:
        return int(block_size)
    return max(8, TILE_ENTRIES // num_anchors)


def _compute_dtype(*arrays):
    # bf16/f16 inputs are promoted: the 1/t² logits need at least float32.
    return jnp.result_type(jnp.float32, *[a.dtype for a in arrays if a is not None])


def gather(x, axis_name: Optional[str]):
    """Inside shard_map: every device sees all rows [B_global, ...]; gradients flow back to the owning device.

    `axis_name=None` (unsharded) or `x=None` returns x. The one all-gather of rows (also the tasks' losses)."""
    return x if axis_name is None or x is None else lax.all_gather(x, axis_name, tiled=True)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def latents(
    anchors: jax.Array,
    prior: jax.Array,
    *,
    num_steps: int,
    solver: str = "euler",
    points: Optional[jax.Array] = None,
    axis_name: Optional[str] = None,
    block_size: Optional[int] = None,
    weights: Optional[jax.Array] = None,
) -> jax.Array:
    """Carries points into their latent zones: the forward flow from t = eps to t = 1.

    Args:
      anchors: [N, D] anchors defining the zones (with `axis_name`: this device's shard [N_local, D]).
      prior: [B, D] Gaussian noise, already scaled by the caller (e.g. × 0.45 in case study 2).
      num_steps: number of solver steps (static). DPM-Solver++ needs at least 3.
      solver: "euler" (eps = 1e-4) or "dpm_solver++" (order 3, multistep, eps = 1e-3).
      points: [B, D] starting anchors; default `anchors` (B = N). For label-conditional generation,
        `anchors[labels]`.
      axis_name: mesh axis to gather anchors over when called inside `jax.shard_map`.
      block_size: query rows per tile (each tile holds [rows, N] logits); default 2²⁴ / N rows, so batches up
        to B = N = 4096 run untiled.
      weights: optional [N] anchor weights as in `assign` (the official flow has none). Weight 0 removes an
        anchor from the mixture exactly, e.g. the padding rows of an evaluation batch.
    Raises:
      ValueError/TypeError for wrong ranks, shapes, dtypes or arguments; eagerly also for non-finite values and
      invalid weights (see "Input checks" above; under jit those give non-finite outputs instead).
    Returns:
      [B, D] latents: the flow started at `eps·prior + (1 − eps)·points`, evaluated at t = 1 (Euler) or
      t = 1 − eps (DPM-Solver++), as the official flows.
    """
    _check_common(anchors, num_steps, solver, block_size)
    if points is None:
        points = anchors
    else:
        _check_matrix("points", points, anchors.shape[1])
    _check_matrix("prior", prior, anchors.shape[1])
    if prior.shape != points.shape:
        raise ValueError(
            f"`prior` has shape {prior.shape} but `points` has {points.shape}: give one noise row per point."
        )
    _check_weights(weights, anchors)
    dtype = _compute_dtype(anchors, prior, points)
    own = own_columns(anchors.shape[0], axis_name) if points is anchors else None
    all_anchors = gather(jnp.asarray(anchors, dtype), axis_name)
    all_weights = gather(None if weights is None else jnp.asarray(weights, dtype), axis_name)
    zones = _make_zones(all_anchors, all_weights, _resolve_block_size(block_size, all_anchors.shape[0]))
    points, z0 = jnp.asarray(points, dtype), _start_noise(prior, dtype, solver)
    return _forward_flow(zones, points, z0, own, solver=solver, num_steps=num_steps)


def _start_noise(prior, dtype, solver):
    """The forward flow's noise coordinate at its first time eps: the prior, or, for a float32 prior in a float64
    flow, float32(float32(eps)·prior)/eps.

    The official flows form the start point's noise term eps·prior in the prior's float32 (their prior data set
    is float32) before adding the float64 anchors; rounding it the same way moves a float64 run's latents by
    ~1e-7 relative (case study 2, eps = 1e-4), the difference tests/test_reference_steps.py sees without it.
    """
    if jnp.dtype(prior.dtype) != jnp.float32 or jnp.dtype(dtype) != jnp.float64:
        return jnp.asarray(prior, dtype)
    eps = EULER_EPS if solver == "euler" else DPM_EPS
    return (np.float32(eps) * jnp.asarray(prior, jnp.float32)).astype(dtype) / eps


def assign(
    anchors: jax.Array,
    latents: jax.Array,
    *,
    num_steps: int,
    solver: str = "euler",
    weights: Optional[jax.Array] = None,
    targets: Optional[jax.Array] = None,
    axis_name: Optional[str] = None,
    block_size: Optional[int] = None,
) -> tuple[jax.Array, jax.Array]:
    """Assigns latents to zones: the reverse flow from t = 1, with per-step log assignment probabilities.

    Args:
      anchors: [N, D] anchors (with `axis_name`: this device's shard, gathered to all N).
      latents: [B, D] points at t = 1 (with `axis_name`: this device's rows).
      num_steps: number of solver steps (static); the log-probabilities are recorded once per model
        evaluation, at the start of each step, normalised over anchors.
      solver: "euler" or "dpm_solver++".
      weights: [N] finite non-negative anchor weights, at least one positive, multiplying each anchor's density
        (class frequencies in case study 3); weight 0 gives probability exactly 0 (log-probability -inf).
        With `axis_name`, this device's shard like `anchors`.
      targets: [B] int global anchor index per row, in [0, N). When given, only those log-probabilities are
        returned and no [num_steps, B, N] array is built — the path the losses use.
      axis_name: mesh axis to gather anchors over when called inside `jax.shard_map`.
      block_size: query rows per tile (see `latents`).
    Raises:
      as `latents`; eagerly also for `targets` outside [0, N) (under jit: NaN log-probabilities in those rows).
    Returns:
      (end_points [B, D], log_probs [num_steps, B, N]) — or log_probs [num_steps, B] with `targets`.
    """
    _check_common(anchors, num_steps, solver, block_size)
    _check_matrix("latents", latents, anchors.shape[1])
    _check_weights(weights, anchors)
    if targets is not None:  # (with axis_name the values are traced: the range is not checked)
        _check_targets(targets, latents.shape[0], anchors.shape[0])
    dtype = _compute_dtype(anchors, latents)
    all_anchors = gather(jnp.asarray(anchors, dtype), axis_name)
    all_weights = gather(None if weights is None else jnp.asarray(weights, dtype), axis_name)
    zones = _make_zones(all_anchors, all_weights, _resolve_block_size(block_size, all_anchors.shape[0]))
    if targets is None:
        targets = jnp.zeros(latents.shape[:1], jnp.int32)
        record = lambda x, t, post: _log_probs_all(zones, x, t)  # noqa: E731
    else:
        # Traced targets are not range-checked: an index outside [0, N) gives NaN rather than wrapping around.
        # A non-finite normaliser (an inf latent coordinate) would give inf - inf or a -inf that reads as
        # "probability 0": NaN too. For valid inputs the normaliser is always finite.
        in_range = (targets >= 0) & (targets < all_anchors.shape[0])
        targets = jnp.where(in_range, targets, 0).astype(jnp.int32)
        def record(x, t, post):
            return jnp.where(in_range & jnp.isfinite(post.lse), post.log_p_target, jnp.nan)
    latents = jnp.asarray(latents, dtype)
    return _reverse_flow(zones, latents, targets, record, solver=solver, num_steps=num_steps)


def own_columns(batch_size: int, axis_name: Optional[str] = None) -> jax.Array:
    """Global anchor index of each local row: [B] = arange(B) + device offset along `axis_name`.

    In case study 2 every sample's own zone is the anchor of its other view, which under sharding sits at
    global index `local index + axis_index · local batch`.
    """
    local = jnp.arange(batch_size, dtype=jnp.int32)
    if axis_name is None:
        return local
    return local + lax.axis_index(axis_name).astype(jnp.int32) * batch_size


def nearest_anchor(anchors: jax.Array, points: jax.Array) -> jax.Array:
    """Index of the nearest anchor (squared Euclidean distance) to every point: `[K, D], [B, D] -> [B]` int32.

    The zone a reverse flow ends in: classification reads a label from where `assign` leaves a latent among the
    label anchors. Computed as argmin_k (|a_k|² − 2·p·a_k) in at least float32: one matmul, no `[B, K, D]` array.
    """
    if anchors.ndim != 2 or points.ndim != 2 or anchors.shape[1] != points.shape[1]:
        raise ValueError(
            f"nearest_anchor expects anchors [K, D] and points [B, D] with the same D; "
            f"got anchors {anchors.shape} and points {points.shape}."
        )
    dtype = jnp.promote_types(jnp.result_type(anchors, points), jnp.float32)
    anchors, points = anchors.astype(dtype), points.astype(dtype)
    cross = jnp.matmul(points, anchors.T, precision=lax.Precision.HIGHEST)
    scores = jnp.sum(anchors**2, axis=-1)[None, :] - 2.0 * cross
    return jnp.argmin(scores, axis=-1).astype(jnp.int32)


def sharded(fn, mesh: jax.sharding.Mesh, axis_name: str = "data"):
    """Wraps `latents` or `assign` to run on global arrays, sharded by rows along `axis_name` of `mesh`.

    Every array argument (anchors, prior, points, latents, weights, targets) is split by rows across the
    axis; each device gathers all anchors, and the outputs come back row-sharded (log_probs keep their
    global anchor columns). Example: `sharded(zoning.assign, mesh)(anchors, latents, num_steps=20)`.
    """
    if fn not in (latents, assign):
        raise ValueError(f"`sharded` wraps zoning.latents or zoning.assign; got {fn!r}.")
    if axis_name not in mesh.shape:
        raise ValueError(f"Mesh has no axis {axis_name!r}; its axes are {tuple(mesh.shape)}.")
    size = mesh.shape[axis_name]
    rows = jax.sharding.PartitionSpec(axis_name)
    out_specs = (rows, jax.sharding.PartitionSpec(None, axis_name)) if fn is assign else rows

    def wrapped(*arrays, **kwargs):
        array_kwargs = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
        static_kwargs = {k: v for k, v in kwargs.items() if k not in array_kwargs}
        named = [(f"positional argument {i}", x) for i, x in enumerate(arrays)] + list(array_kwargs.items())
        for name, x in named:
            if x.ndim == 0 or x.shape[0] % size:
                raise ValueError(
                    f"`{name}` has shape {x.shape}: its rows must divide evenly across the {size} devices of mesh "
                    f"axis {axis_name!r}. Use a batch size that is a multiple of {size}."
                )

        def local(arrays, array_kwargs):
            return fn(*arrays, **array_kwargs, **static_kwargs, axis_name=axis_name)

        placed = jax.device_put((tuple(arrays), array_kwargs), jax.sharding.NamedSharding(mesh, rows))
        return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows), out_specs=out_specs)(*placed)

    return wrapped
