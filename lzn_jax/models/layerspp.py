"""NCSN++ blocks (Song et al. 2021), NHWC Flax versions of the official `ncsnpp_lib/layerspp.py` layers.

Submodule names inside each block (`GroupNorm_0`, `Conv_0`, `Dense_0`, `NIN_0`, `Conv2d_0`, …) are the ones the
official PyTorch modules use, so a converted state dict maps onto them one to one (`lzn_jax/convert.py`).
Every block takes `train` as a keyword only where it has dropout, and `precision` (the matmul/conv precision,
`layers.HIGHEST` by default) for every product it computes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lzn_jax.models import layers

Dtype = Any
Precision = layers.Precision
_SQRT2 = math.sqrt(2.0)


def merge_skip(x: jax.Array, h: jax.Array, skip_rescale: bool) -> jax.Array:
    """Residual sum, divided by sqrt(2) when `skip_rescale` keeps the variance of the sum at that of its terms."""
    return (x + h) / _SQRT2 if skip_rescale else x + h


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of a scalar: `[B] -> [B, 2·embedding_size]` (`[sin | cos]`).

    The frequencies `W ~ N(0, scale²)` are a parameter (so checkpoints and parameter counts match upstream) but
    are never trained: upstream sets `requires_grad=False`, here the gradient is stopped.
    """

    embedding_size: int
    scale: float = 1.0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param(
            "W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,), self.param_dtype
        )
        w = jax.lax.stop_gradient(w).astype(jnp.float32)
        proj = x.astype(jnp.float32)[:, None] * w[None, :] * (2 * jnp.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class Combine(nn.Module):
    """Merges the input pyramid `x` into the feature map `y` (`'sum'` or `'cat'` after a 1x1 conv of `x`)."""

    method: str = "cat"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        h = layers.conv1x1(
            y.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision, name="Conv_0"
        )(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"progressive_combine={self.method!r} is not supported; use 'cat' or 'sum'.")


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all pixels, `[B, H, W, C] -> [B, H, W, C]`, with a residual connection."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        h = layers.group_norm(c, name="GroupNorm_0", **kw)(x)
        q = layers.NIN(c, name="NIN_0", **kw)(h)
        k = layers.NIN(c, name="NIN_1", **kw)(h)
        v = layers.NIN(c, name="NIN_2", **kw)(h)
        logits = jnp.einsum("bhwc,bijc->bhwij", q, k, precision=self.precision) * (c**-0.5)
        # Softmax in at least float32 so bf16 runs do not lose the small attention weights.
        softmax_dtype = jnp.promote_types(logits.dtype, jnp.float32)
        weights = jax.nn.softmax(logits.reshape(b, height, width, height * width).astype(softmax_dtype), axis=-1)
        weights = weights.reshape(b, height, width, height, width).astype(v.dtype)
        h = jnp.einsum("bhwij,bijc->bhwc", weights, v, precision=self.precision)
        h = layers.NIN(c, init_scale=self.init_scale, name="NIN_3", **kw)(h)
        return merge_skip(x, h, self.skip_rescale)


class FIRConv(nn.Module):
    """3x3 convolution fused with FIR up- or downsampling by 2 (upstream's `up_or_down_sampling.Conv2d`)."""

    features: int
    up: bool = False
    down: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.up == self.down:
            raise ValueError("FIRConv needs exactly one of up=True or down=True.")
        kernel = self.param("kernel", layers.default_init(), (3, 3, x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", jax.nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        if self.up:
            h = layers.upsample_conv_2d(x, kernel, self.fir_kernel, precision=self.precision)
        else:
            h = layers.conv_downsample_2d(x, kernel, self.fir_kernel, precision=self.precision)
        return h + bias


class Upsample(nn.Module):
    """2x upsampling: nearest (+ 3x3 conv) or FIR (+ fused conv). `out_ch=None` keeps the channel count."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_ch = self.out_ch or x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        if not self.fir:
            h = layers.naive_upsample_2d(x)
            return layers.conv3x3(out_ch, name="Conv_0", **kw)(h) if self.with_conv else h
        if not self.with_conv:
            return layers.upsample_2d(x, self.fir_kernel, precision=self.precision)
        return FIRConv(out_ch, up=True, fir_kernel=self.fir_kernel, name="Conv2d_0", **kw)(x)


class Downsample(nn.Module):
    """2x downsampling: strided 3x3 conv or 2x2 average (plain), FIR conv or FIR filter (`fir=True`)."""

    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_ch = self.out_ch or x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        if not self.fir:
            if not self.with_conv:
                return layers.naive_downsample_2d(x)
            # Upstream pads one pixel at the bottom/right, then convolves with stride 2 and no padding.
            return layers.conv3x3(out_ch, stride=2, padding=((0, 1), (0, 1)), name="Conv_0", **kw)(x)
        if not self.with_conv:
            return layers.downsample_2d(x, self.fir_kernel, precision=self.precision)
        return FIRConv(out_ch, down=True, fir_kernel=self.fir_kernel, name="Conv2d_0", **kw)(x)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block: GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv, shortcut (NIN or 3x3 conv)."""

    nonlinearity: str = "swish"
    out_ch: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = False) -> jax.Array:
        act = layers.activation(self.nonlinearity)
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        h = act(layers.group_norm(in_ch, name="GroupNorm_0", **kw)(x))
        h = layers.conv3x3(out_ch, name="Conv_0", **kw)(h)
        if temb is not None:
            h = h + layers.dense(out_ch, name="Dense_0", **kw)(act(temb))[:, None, None, :]
        h = act(layers.group_norm(out_ch, name="GroupNorm_1", **kw)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = layers.conv3x3(out_ch, init_scale=self.init_scale, name="Conv_1", **kw)(h)
        if in_ch != out_ch:
            if self.conv_shortcut:
                x = layers.conv3x3(out_ch, name="Conv_2", **kw)(x)
            else:
                x = layers.NIN(out_ch, name="NIN_0", **kw)(x)
        return merge_skip(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block, optionally resampling by 2 (`up`/`down`) on both branches, 1x1-conv shortcut."""

    nonlinearity: str = "swish"
    out_ch: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = layers.HIGHEST

    def _resample(self, x: jax.Array) -> jax.Array:
        if self.up and self.fir:
            return layers.upsample_2d(x, self.fir_kernel, precision=self.precision)
        if self.up:
            return layers.naive_upsample_2d(x)
        if self.down and self.fir:
            return layers.downsample_2d(x, self.fir_kernel, precision=self.precision)
        if self.down:
            return layers.naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = False) -> jax.Array:
        act = layers.activation(self.nonlinearity)
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        h = act(layers.group_norm(in_ch, name="GroupNorm_0", **kw)(x))
        h, x = self._resample(h), self._resample(x)
        h = layers.conv3x3(out_ch, name="Conv_0", **kw)(h)
        if temb is not None:
            h = h + layers.dense(out_ch, name="Dense_0", **kw)(act(temb))[:, None, None, :]
        h = act(layers.group_norm(out_ch, name="GroupNorm_1", **kw)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = layers.conv3x3(out_ch, init_scale=self.init_scale, name="Conv_1", **kw)(h)
        if in_ch != out_ch or self.up or self.down:
            x = layers.conv1x1(out_ch, name="Conv_2", **kw)(x)
        return merge_skip(x, h, self.skip_rescale)
