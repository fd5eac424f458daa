"""Label anchors of LZN case study 3: one learnable latent point per class.

Classification maps a latent to the class of its nearest anchor (`nearest_label`); label-conditional generation
starts from a class's anchor. The latent flows that connect the two live in the zoning kernel, not here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class LabelAnchors(nn.Module):
    """A `[num_classes, latent_dim]` table initialised N(0, 1): `la.apply({"params": p}) -> [K, latent_dim]`.

    Its single parameter is `anchors` (the official `LabelAnchor.anchor`).
    """

    num_classes: int
    latent_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        anchors = self.param(
            "anchors", jax.nn.initializers.normal(stddev=1.0), (self.num_classes, self.latent_dim), self.param_dtype
        )
        return anchors.astype(self.dtype)


def nearest_label(anchors: jax.Array, points: jax.Array) -> jax.Array:
    """Index of the nearest anchor (squared Euclidean distance) for every point: `[K, D], [B, D] -> [B]` int32.

    Uses argmin_k (|a_k|² − 2·p·a_k), which drops the per-point |p|² and never materialises a `[B, K, D]` array.
    """
    if anchors.ndim != 2 or points.ndim != 2 or anchors.shape[1] != points.shape[1]:
        raise ValueError(
            f"nearest_label expects anchors [K, D] and points [B, D] with the same D; "
            f"got anchors {anchors.shape} and points {points.shape}."
        )
    dtype = jnp.promote_types(jnp.result_type(anchors, points), jnp.float32)
    anchors, points = anchors.astype(dtype), points.astype(dtype)
    cross = jnp.matmul(points, anchors.T, precision=jax.lax.Precision.HIGHEST)
    scores = jnp.sum(anchors**2, axis=-1)[None, :] - 2.0 * cross
    return jnp.argmin(scores, axis=-1).astype(jnp.int32)
