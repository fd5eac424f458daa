"""Case study 2: unsupervised representation learning, with no auxiliary loss.

Two augmented views of each image go through the same encoder. The latents of view 1 (forward flow over all
view-1 anchors, prior × 0.45) flow back over the view-2 anchors, and each must end in the zone of its own
image's view-2 anchor: −mean log max_{s ≥ cutoff} P[s, i, i].
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lzn_jax import losses, zoning
from lzn_jax.tasks import common, protocol


@dataclasses.dataclass(frozen=True)
class RepresentationTask:
    encoder: nn.Module
    latent_dim: int
    solver: str = "euler"
    num_steps: int = 20
    prior_scale: float = 0.45
    cutoff: float = 0.2
    prob_weight: float = 0.0
    cross_entropy_weight: float = 1.0
    block_size: Optional[int] = None
    modules: tuple[str, ...] = ("encoder",)
    capabilities: ClassVar[frozenset[str]] = frozenset({protocol.EMBEDS, protocol.ZONES})

    @classmethod
    def check_config(cls, config) -> None:
        common.require(config, "encoder", task="representation")
        if config.data.num_views != 2:
            raise ValueError(f"task='representation' trains on two views: set config.data.num_views=2 (got {config.data.num_views}).")

    @classmethod
    def model_configs(cls, config) -> dict:
        cls.check_config(config)
        return {"encoder": common.complete_section(config.encoder, "encoder", latent_dim=config.latent_dim)}

    @classmethod
    def from_config(cls, config) -> "RepresentationTask":
        return cls(
            encoder=common.build_module(cls.model_configs(config)["encoder"], config),
            latent_dim=config.latent_dim,
            solver=config.zoning.solver,
            num_steps=config.zoning.num_steps,
            prior_scale=config.zoning.prior_scale,
            cutoff=config.zoning.cutoff,
            prob_weight=config.loss.prob,
            cross_entropy_weight=config.loss.cross_entropy,
            block_size=config.zoning.block_size or None,
        )

    def init(self, rng, batch) -> dict:
        return {"encoder": common.init_variables(self.encoder, rng, batch["image"])}

    def noise(self, rng, batch) -> dict:
        """{"prior" [B, Dz] float32, unscaled (as the official prior loader)}."""
        b = batch["image"].shape[0]
        return common.draws(batch, lambda: {"prior": jax.random.normal(rng, (b, self.latent_dim), jnp.float32)})

    def embed(self, params, images, *, apply_head: bool = True, train=False, rng=None):
        """images [B, H, W, C] -> anchors [B, Dz] (or the pre-head features with apply_head=False)."""
        return common.apply_encoder(self.encoder, params, images, apply_head=apply_head, train=train, rng=rng)

    def image_latents(self, params, images, prior, *, axis_name=None, train=False, rng=None, mask=None):
        """image encoder + the case-study-2 forward flow: [B, H, W, C], prior [B, Dz] (unscaled) -> latents [B, Dz].

        As `GenerationTask.image_latents`: every row is an anchor of the mixture; `mask` [B] leaves padding out.
        """
        anchors = common.at_least_float32(self.embed(params, images, train=train, rng=rng))
        return zoning.latents(
            anchors, prior * self.prior_scale, num_steps=self.num_steps, solver=self.solver, axis_name=axis_name,
            block_size=self.block_size, weights=None if mask is None else mask.astype(jnp.float32),
        )  # fmt: skip

    def loss(self, params, batch, noise, rng, *, axis_name=None):
        k1, k2 = jax.random.split(rng)
        anchors1 = common.at_least_float32(self.embed(params, batch["image"], train=True, rng=k1))
        anchors2 = common.at_least_float32(self.embed(params, batch["image2"], train=True, rng=k2))
        kernel = dict(num_steps=self.num_steps, solver=self.solver, axis_name=axis_name, block_size=self.block_size)
        latents = zoning.latents(anchors1, noise["prior"] * self.prior_scale, **kernel)
        own = zoning.own_columns(anchors1.shape[0], axis_name)
        end, log_probs = zoning.assign(anchors2, latents, targets=own, **kernel)
        parts = losses.representation_loss(
            log_probs, cutoff=self.cutoff, prob_weight=self.prob_weight, cross_entropy_weight=self.cross_entropy_weight
        )
        metrics = {
            "loss": parts["total"],
            "prob": parts["prob"],
            "cross_entropy": parts["cross_entropy"],
            "assignment_accuracy": losses.assignment_accuracy(log_probs),
            "ode_error": losses.ode_error(jax.lax.stop_gradient(zoning.gather(anchors2, axis_name)), end),
        }
        return parts["total"], metrics
