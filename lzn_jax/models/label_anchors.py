"""Label anchors of LZN case study 3: one learnable latent point per class.

Classification maps a latent to the class of its nearest anchor (`lzn_jax.zoning.nearest_anchor`); label-conditional
generation starts from a class's anchor. The latent flows that connect the two live in the zoning kernel, not here:
models know nothing of zoning.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class LabelAnchors(nn.Module):
    """A `[num_classes, latent_dim]` table initialised N(0, 1): `la.apply({"params": p}) -> [K, latent_dim]`.

    Its single parameter is `anchors` (the official `LabelAnchor.anchor`).
    """

    TINY: ClassVar[dict] = {}  # the `:runlocal` preset: a table is already small

    num_classes: int
    latent_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def check_image_size(self, image_size: int, where: str) -> None:
        """Every model checks the image size it is configured for; the anchors take no images."""

    @nn.nowrap
    def example_inputs(self, image_size: int, num_channels: int) -> tuple:
        """`init` takes no inputs."""
        return ()

    @nn.compact
    def __call__(self) -> jax.Array:
        anchors = self.param(
            "anchors", jax.nn.initializers.normal(stddev=1.0), (self.num_classes, self.latent_dim), self.param_dtype
        )
        return anchors.astype(self.dtype)
