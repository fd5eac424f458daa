"""Zoning losses and diagnostics, written against `zoning.assign(..., targets=...)` log-probabilities.

All inputs are per-device; batch means are local (the train step averages them over devices, which equals
the global mean because every device holds the same number of rows). Class weights are global.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from lzn_jax.zoning import nearest_anchor  # noqa: F401 -- re-exported: the losses' metrics read zones with it


def _cutoff_step(num_steps: int, cutoff: float) -> int:
    """First step that counts: int(num_steps · cutoff), as the official trainers."""
    if not 0.0 <= cutoff < 1.0:
        raise ValueError(f"`cutoff` must be in [0, 1) (a fraction of the flow's steps); got {cutoff}.")
    return int(num_steps * cutoff)


def _best_log_prob(log_probs: jax.Array, cutoff: float) -> jax.Array:
    """max over steps s ≥ cutoff of log P[s, i]: [S, B] -> [B]."""
    if log_probs.ndim != 2:
        raise ValueError(f"`log_probs` must be [num_steps, B] (zoning.assign with targets); got {log_probs.shape}.")
    return jnp.max(log_probs[_cutoff_step(log_probs.shape[0], cutoff) :], axis=0)


def representation_loss(
    log_probs: jax.Array, *, cutoff: float = 0.2, prob_weight: float = 0.0, cross_entropy_weight: float = 1.0
) -> dict[str, jax.Array]:
    """Case study 2: every latent of view 1 must flow back into the zone of its own view-2 anchor.

    Args:
      log_probs: [S, B] log P[s, i, own_i] from `zoning.assign(view2_anchors, latents, targets=own)`.
      cutoff: fraction of early steps ignored (official 0.2).
      prob_weight, cross_entropy_weight: official weights of −mean max P and −mean log max P (0 and 1).
    Returns:
      {"total", "prob", "cross_entropy"} scalars.
    """
    best = _best_log_prob(log_probs, cutoff)
    prob = -jnp.mean(jnp.exp(best))
    cross_entropy = -jnp.mean(best)
    return {"total": prob_weight * prob + cross_entropy_weight * cross_entropy, "prob": prob, "cross_entropy": cross_entropy}


def label_loss(log_probs: jax.Array, *, cutoff: float = 0.2) -> jax.Array:
    """Case study 3: −mean_i max_{s ≥ cutoff} P[s, i, label_i] (a probability, not its log, as the official).

    Args:
      log_probs: [S, B] from `zoning.assign(label_anchors, image_latents, weights=class_weights, targets=labels)`.
    """
    return -jnp.mean(jnp.exp(_best_log_prob(log_probs, cutoff)))


def class_weights(
    labels: jax.Array, num_classes: int, *, axis_name: Optional[str] = None, mask: Optional[jax.Array] = None
) -> jax.Array:
    """Class frequencies of the global batch: [K] = count_k / Σ count (summed over `axis_name` devices).

    `mask` [B] (bool) leaves out padding rows.
    """
    ones = jnp.ones(labels.shape, jnp.result_type(float)) if mask is None else mask.astype(jnp.result_type(float))
    counts = jnp.zeros((num_classes,), ones.dtype).at[labels].add(ones)
    if axis_name is not None:
        counts = lax.psum(counts, axis_name)
    return counts / jnp.sum(counts)


def assignment_accuracy(log_probs: jax.Array) -> jax.Array:
    """mean_i P[last step, i, target_i]: how firmly latents sit in their own zone at the end. [S, B] -> []."""
    return jnp.mean(jnp.exp(log_probs[-1]))


def ode_error(anchors: jax.Array, end_points: jax.Array) -> jax.Array:
    """Relative distance between where the reverse flow ends and the anchor it ends at.

    mean_i ||a_k − end_i|| / ||a_k|| with k the nearest anchor to end_i. (The official trainer takes k from the
    probabilities at the start of the last step; at the end of a converged flow the two agree.)
    """
    nearest = anchors[nearest_anchor(anchors, end_points)]
    return jnp.mean(jnp.linalg.norm(nearest - end_points, axis=-1) / jnp.linalg.norm(nearest, axis=-1))
