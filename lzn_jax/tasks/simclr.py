"""SimCLR (NT-Xent) on the same encoder, views and budget as case study 2: the paper's contrastive baseline.

For 2B projected, L2-normalised views z, each view's positive is the other view of its image and its
negatives are the other 2B − 2 views of the global batch: −log softmax_τ(z_i · z_pos).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from lzn_jax import zoning
from lzn_jax.tasks import common, protocol
from lzn_jax.tasks.representation import RepresentationTask


def nt_xent(z1, z2, all_z1, all_z2, own, temperature):
    """Local views z1, z2 [b, F] against the global ones [B, F]; own [b] global row indices -> loss [2b]."""
    candidates = jnp.concatenate([all_z1, all_z2])  # [2B, F]
    big = all_z1.shape[0]

    def side(z, self_index, positive_index):
        logits = jnp.matmul(z, candidates.T, precision=jax.lax.Precision.HIGHEST) / temperature
        logits = logits.at[jnp.arange(z.shape[0]), self_index].set(-jnp.inf)  # a view is not its own negative
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), positive_index[:, None], axis=1)[:, 0]

    return jnp.concatenate([side(z1, own, own + big), side(z2, own + big, own)])


@dataclasses.dataclass(frozen=True)
class SimCLRTask:
    encoder: nn.Module
    latent_dim: int
    temperature: float = 0.5
    modules: tuple[str, ...] = ("encoder",)
    capabilities: ClassVar[frozenset[str]] = frozenset({protocol.EMBEDS})  # no zoning: no latents

    @classmethod
    def check_config(cls, config) -> None:
        RepresentationTask.check_config(config)
        if config.loss.temperature <= 0:
            raise ValueError(f"config.loss.temperature must be positive; got {config.loss.temperature}.")

    model_configs = RepresentationTask.model_configs

    @classmethod
    def from_config(cls, config) -> "SimCLRTask":
        encoder = common.build_module(cls.model_configs(config)["encoder"], config)
        return cls(encoder=encoder, latent_dim=config.latent_dim, temperature=config.loss.temperature)

    init = RepresentationTask.init
    embed = RepresentationTask.embed

    def noise(self, rng, batch) -> dict:
        return common.draws(batch, lambda: {})

    def loss(self, params, batch, noise, rng, *, axis_name=None):
        k1, k2 = jax.random.split(rng)

        def project(images, key):
            z = common.at_least_float32(self.embed(params, images, train=True, rng=key))
            return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))  # finite grad at 0

        z1, z2 = project(batch["image"], k1), project(batch["image2"], k2)
        own = zoning.own_columns(z1.shape[0], axis_name)
        per_view = nt_xent(z1, z2, zoning.gather(z1, axis_name), zoning.gather(z2, axis_name), own, self.temperature)
        loss = jnp.mean(per_view)
        accuracy = jnp.mean(jnp.sum(z1 * z2, axis=-1))  # mean cosine similarity of positive pairs
        metrics = {"loss": loss, "positive_cosine": accuracy}
        return loss, metrics
