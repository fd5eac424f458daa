"""Case studies 1 and 3: rectified-flow generation conditioned on LZN latents, optionally with labels.

    image encoder ──anchors──▶ zoning.latents (DPM-Solver++) ──latent──▶ NCSN++ decoder (RF loss)
                                                  │
    label anchors ◀── zoning.assign (Euler, class weights) ── label loss          (conditional=True)

Without an encoder the decoder is a plain rectified flow (the baseline of case study 1).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lzn_jax import losses, samplers, zoning
from lzn_jax.tasks import common, protocol


@dataclasses.dataclass(frozen=True)
class GenerationTask:
    decoder: nn.Module
    encoder: Optional[nn.Module]
    label_anchors: Optional[nn.Module]
    num_classes: int
    latent_dim: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    solver: str = "dpm_solver++"
    num_steps: int = 20
    prior_scale: float = 1.0
    label_solver: str = "euler"
    label_num_steps: int = 100
    cutoff: float = 0.2
    recon_weight: float = 1.0
    label_weight: float = 1.0
    t_eps: float = 1e-3
    euler_steps: int = 10
    rk45_tol: tuple[float, float] = (1e-5, 1e-5)  # (rtol, atol)
    block_size: Optional[int] = None

    @classmethod
    def check_config(cls, config) -> None:
        common.require(config, "decoder", task="generation")
        if config.conditional:
            common.require(config, "label_anchors", task="generation (conditional=True)")
            if not config.encoder.get("name"):
                raise ValueError("conditional=True needs an image encoder (config.encoder): labels are read from latents.")

    @classmethod
    def model_configs(cls, config) -> dict:
        """Complete sections of the modules: the decoder takes a latent only with an encoder, labels only when
        conditional; the label anchors live in the latent space."""
        cls.check_config(config)
        has_encoder = bool(config.encoder.get("name"))
        out = {"decoder": common.complete_section(
            config.decoder, "decoder", latent_dim=config.latent_dim if has_encoder else 0,
            num_classes=config.num_classes if config.conditional else 0,
        )}  # fmt: skip
        if has_encoder:
            out["encoder"] = common.complete_section(config.encoder, "encoder", latent_dim=config.latent_dim)
        if config.conditional:
            out["label_anchors"] = common.complete_section(
                config.label_anchors, "label_anchors", latent_dim=config.latent_dim, num_classes=config.num_classes
            )
        return out

    @classmethod
    def from_config(cls, config) -> "GenerationTask":
        sections = cls.model_configs(config)
        built = {name: common.build_module(section, config) for name, section in sections.items()}
        return cls(
            decoder=built["decoder"],
            encoder=built.get("encoder"),
            label_anchors=built.get("label_anchors"),
            num_classes=config.num_classes,
            latent_dim=config.latent_dim,
            image_shape=(config.data.image_size, config.data.image_size, config.data.num_channels),
            solver=config.zoning.solver,
            num_steps=config.zoning.num_steps,
            prior_scale=config.zoning.prior_scale,
            label_solver=config.zoning.label_solver,
            label_num_steps=config.zoning.label_num_steps,
            cutoff=config.zoning.cutoff,
            recon_weight=config.loss.recon,
            label_weight=config.loss.label,
            t_eps=config.rf.t_eps,
            euler_steps=config.rf.euler_steps,
            rk45_tol=(config.rf.rk45_rtol, config.rf.rk45_atol),
            block_size=config.zoning.block_size or None,
        )

    @property
    def conditional(self) -> bool:
        return self.label_anchors is not None

    @property
    def capabilities(self) -> frozenset[str]:
        """Generates and inverts always; embeds and zones with an image encoder; classifies with label anchors."""
        found = {protocol.GENERATES, protocol.INVERTS}
        if self.encoder is not None:
            found |= {protocol.EMBEDS, protocol.ZONES}
        if self.conditional:
            found.add(protocol.CLASSIFIES)
        return frozenset(found)

    @property
    def modules(self) -> tuple[str, ...]:
        present = {"encoder": self.encoder, "decoder": self.decoder, "label_anchors": self.label_anchors}
        return tuple(name for name, module in present.items() if module is not None)

    # ---------------------------------------------------------------- parameters and randomness

    def init(self, rng, batch) -> dict:
        images = batch["image"]
        b = images.shape[0]
        rngs = dict(zip(("encoder", "decoder", "label_anchors"), jax.random.split(rng, 3)))
        params = {}
        latent = None
        if self.encoder is not None:
            params["encoder"] = common.init_variables(self.encoder, rngs["encoder"], images)
            latent = jnp.zeros((b, self.latent_dim), images.dtype)
        label = common.one_hot(jnp.zeros((b,), jnp.int32), self.num_classes) if self.conditional else None
        params["decoder"] = common.init_variables(self.decoder, rngs["decoder"], latent, label, jnp.ones((b,)), images)
        if self.conditional:
            params["label_anchors"] = self.label_anchors.init(rngs["label_anchors"])["params"]
        return params

    def noise(self, rng, batch) -> dict:
        """{"prior" [B, Dz] float32 (as the official prior loader), "t" [B] in [t_eps, 1), "x0" [B, H, W, C]}."""
        images = batch["image"]
        b = images.shape[0]

        def draw():
            k_prior, k_t, k_x0 = jax.random.split(rng, 3)
            return {
                "prior": jax.random.normal(k_prior, (b, self.latent_dim), jnp.float32),
                "t": jax.random.uniform(k_t, (b,), images.dtype) * (1.0 - self.t_eps) + self.t_eps,
                "x0": jax.random.normal(k_x0, images.shape, images.dtype),
            }

        return common.draws(batch, draw)

    # ---------------------------------------------------------------- compositions

    def embed(self, params, images, *, apply_head: bool = True, train=False, rng=None):
        """image encoder: images [B, H, W, C] -> anchors [B, Dz]."""
        return common.apply_encoder(self.encoder, params, images, apply_head=apply_head, train=train, rng=rng)

    def image_latents(self, params, images, prior, *, axis_name=None, train=False, rng=None, mask=None):
        """image encoder + forward flow: [B, H, W, C], prior [B, Dz] (unscaled) -> latents [B, Dz].

        A latent depends on every image encoded with it: all rows are the zones' anchors (with `axis_name`, the
        rows of every device). `mask` [B] leaves padding rows out of the mixture.
        """
        rngs = {"dropout": rng} if train else {}
        anchors = self.encoder.apply({"params": params["encoder"]}, images, train=train, rngs=rngs)
        return zoning.latents(
            common.at_least_float32(anchors), prior * self.prior_scale, num_steps=self.num_steps, solver=self.solver,
            axis_name=axis_name, block_size=self.block_size, weights=None if mask is None else mask.astype(jnp.float32),
        )  # fmt: skip

    def label_latents(self, params, labels, prior):
        """label anchors + forward flow: labels [B], prior [B, Dz] -> latents in each label's zone."""
        anchors = self.label_anchors.apply({"params": params["label_anchors"]})
        return zoning.latents(
            anchors, prior, num_steps=self.label_num_steps, solver=self.label_solver, points=anchors[labels]
        )

    def label_log_probs(self, params, latents, labels=None, weights=None):
        """reverse flow over label anchors: (end points [B, Dz], log-probs [S, B] at labels or [S, B, K])."""
        anchors = self.label_anchors.apply({"params": params["label_anchors"]})
        return zoning.assign(
            anchors, latents, num_steps=self.label_num_steps, solver=self.label_solver, weights=weights,
            targets=labels,
        )  # fmt: skip

    def classify_latents(self, params, latents, weights=None):
        """latents [B, Dz] -> predicted class [B]: the nearest label anchor to where the reverse flow ends."""
        end, _ = self.label_log_probs(params, latents, weights=weights)
        anchors = self.label_anchors.apply({"params": params["label_anchors"]})
        return zoning.nearest_anchor(anchors, end)

    def velocity_fn(self, params, latent=None, labels=None, *, train=False, rng=None):
        """The decoder with latent and one-hot labels bound: (t [B], x_t [B, H, W, C]) -> velocity."""
        label = common.one_hot(labels, self.num_classes) if self.conditional else None
        rngs = {"dropout": rng} if train else {}

        def velocity(t, xt):
            return self.decoder.apply({"params": params["decoder"]}, latent, label, t, xt, train=train, rngs=rngs)

        return velocity

    # ---------------------------------------------------------------- sampling and inversion

    def _integrate(self, params, x, latent, labels, sampler, t0, t1):
        rtol, atol = self.rk45_tol
        velocity = self.velocity_fn(params, latent, labels)
        return samplers.integrate(velocity, x, t0=t0, t1=t1, sampler=sampler, num_steps=self.euler_steps, rtol=rtol,
                                  atol=atol)  # fmt: skip

    def decode(self, params, noise, latent=None, labels=None, *, sampler="euler"):
        """noise x0 [B, H, W, C] at t = eps -> images at t = 1, conditioned on latent / labels (euler | rk45)."""
        return self._integrate(params, noise, latent, labels, sampler, self.t_eps, 1.0)

    def invert(self, params, images, latent=None, labels=None, *, sampler="euler"):
        """images [B, H, W, C] at t = 1 -> the initial noise the decoder ODE maps to them (euler | rk45)."""
        return self._integrate(params, images, latent, labels, sampler, 1.0, self.t_eps)

    def sample(self, params, key, labels=None, *, num=None, sampler="euler"):
        """New images: labels [B] → label zones (conditional), else latent ~ N(0, I) (or no latent)."""
        num = labels.shape[0] if labels is not None else num
        k_latent, k_noise = jax.random.split(key)
        prior = jax.random.normal(k_latent, (num, self.latent_dim))
        if self.conditional:
            if labels is None:
                raise ValueError("A conditional model samples per label: pass `labels` [B].")
            latent = self.label_latents(params, labels, prior)
        else:
            latent = prior if self.encoder is not None else None
        noise = jax.random.normal(k_noise, (num,) + tuple(self.image_shape))
        return self.decode(params, noise, latent, labels, sampler=sampler)

    # ---------------------------------------------------------------- training loss

    def loss(self, params, batch, noise, rng, *, axis_name=None):
        images, labels = batch["image"], batch["label"]
        k_enc, k_dec = jax.random.split(rng)
        latent = None
        if self.encoder is not None:
            latent = self.image_latents(params, images, noise["prior"], axis_name=axis_name, train=True, rng=k_enc)
        xt = samplers.interpolate_xt(images, noise["x0"], noise["t"])
        velocity = self.velocity_fn(params, latent, labels, train=True, rng=k_dec)(noise["t"], xt)
        recon = jnp.mean((images - noise["x0"] - common.at_least_float32(velocity)) ** 2)
        metrics = {"recon": recon}
        total = self.recon_weight * recon
        if self.conditional:
            # float32 frequencies, as the official trainer divides float32 counts (a float64 run rounds them too).
            weights = losses.class_weights(labels, self.num_classes, axis_name=axis_name).astype(jnp.float32)
            end, log_probs = self.label_log_probs(params, latent, labels, weights)
            label = losses.label_loss(log_probs, cutoff=self.cutoff)
            anchors = self.label_anchors.apply({"params": params["label_anchors"]})
            metrics["label"] = label
            metrics["label_accuracy"] = jnp.mean(zoning.nearest_anchor(anchors, end) == labels)
            total = total + self.label_weight * label
        metrics["loss"] = total
        return total, metrics
