"""Building blocks shared by the NCSN++ networks: initialisers, activations, convolutions and FIR resampling.

Everything here is NHWC. The initialisers reproduce the official PyTorch code (itself a port of score_sde's
Flax layers), so freshly initialised networks start where the official ones start:

- `default_init(scale)`: DDPM's variance scaling (fan_avg, uniform); a scale of 0 becomes 1e-10 so that
  "zero-initialised" output layers still carry a (tiny) gradient signal through their weights.
- `torch_default_kernel_init` / `torch_default_bias_init`: what `torch.nn.Linear` / `torch.nn.Conv2d` do when the
  official code leaves their initialisation alone (kaiming-uniform with a=sqrt(5), i.e. U(±1/sqrt(fan_in))).

FIR resampling follows StyleGAN2's `upfirdn2d` (pad, upsample by zero insertion, filter, downsample), expressed
as one depthwise `lax.conv_general_dilated` per call.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype

Dtype = Any
Precision = Any  # jax.lax.PrecisionLike: None, "default", "high", "highest" or a lax.Precision
HIGHEST = "highest"  # float32 products computed in float32 (the official run); TPU's "default" is one bf16 pass
Initializer = Callable[..., jax.Array]

_ACTIVATIONS = {
    "swish": nn.swish,
    "relu": nn.relu,
    "elu": nn.elu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The nonlinearity called `name` in the official configs (`swish`, `relu`, `elu` or `lrelu`)."""
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"nonlinearity={name!r} is not supported; use one of {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[key]


def default_init(scale: float = 1.0) -> Initializer:
    """DDPM initialisation: variance scaling with fan_avg and a uniform distribution (scale 0 -> 1e-10)."""
    return jax.nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


# torch.nn.Linear/Conv2d defaults: kaiming_uniform(a=sqrt(5)), a bound of 1/sqrt(fan_in) = sqrt(3 · (1/3) / fan_in).
torch_default_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
    """torch's default bias initialisation U(-1/sqrt(fan_in), 1/sqrt(fan_in)); `fan_in` is the layer's input size."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv3x3(
    features: int,
    *,
    init_scale: float = 1.0,
    use_bias: bool = True,
    stride: int = 1,
    padding: Any = ((1, 1), (1, 1)),
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    precision: Precision = HIGHEST,
    name: str | None = None,
) -> nn.Conv:
    """3x3 convolution with DDPM initialisation and zero bias (torch padding=1 unless given)."""
    return nn.Conv(
        features,
        kernel_size=(3, 3),
        strides=(stride, stride),
        padding=padding,
        use_bias=use_bias,
        kernel_init=default_init(init_scale),
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        name=name,
    )


def conv1x1(
    features: int,
    *,
    init_scale: float = 1.0,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    precision: Precision = HIGHEST,
    name: str | None = None,
) -> nn.Conv:
    """1x1 convolution with DDPM initialisation and zero bias."""
    return nn.Conv(
        features,
        kernel_size=(1, 1),
        padding="VALID",
        kernel_init=default_init(init_scale),
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        name=name,
    )


def dense(
    features: int,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    precision: Precision = HIGHEST,
    name: str | None = None,
) -> nn.Dense:
    """Dense layer with DDPM initialisation and zero bias (the official code re-initialises these Linears)."""
    return nn.Dense(
        features,
        kernel_init=default_init(),
        bias_init=jax.nn.initializers.zeros,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        name=name,
    )


def group_norm(
    num_channels: int, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, precision: Precision = None,
    name=None,
):  # fmt: skip
    """NCSN++'s GroupNorm: min(C // 4, 32) groups, eps 1e-6.

    Two-pass variance (as torch) rather than E[x²] − E[x]², which loses precision when groups have small spread.
    `precision` is accepted (and unused: no matmul) so blocks pass one set of numeric fields to every layer.
    """
    del precision
    return nn.GroupNorm(
        num_groups=min(num_channels // 4, 32),
        epsilon=1e-6,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class NIN(nn.Module):
    """Per-pixel linear map over channels ("network in network"): `[..., C_in] -> [..., num_units]`.

    Its kernel is stored `[C_in, num_units]`, like the official `NIN.W`. Default init scale 0.1 as upstream.
    """

    num_units: int
    init_scale: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", default_init(self.init_scale), (x.shape[-1], self.num_units), self.param_dtype)
        bias = self.param("bias", jax.nn.initializers.zeros, (self.num_units,), self.param_dtype)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum("...c,cd->...d", x, kernel, precision=self.precision) + bias


def timestep_embedding(timesteps: jax.Array, embedding_dim: int, max_positions: int = 10000) -> jax.Array:
    """Sinusoidal embedding of (float) timesteps: `[B] -> [B, embedding_dim]`, `[sin | cos]` halves (DDPM)."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D [B]; got shape {timesteps.shape}.")
    half = embedding_dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_positions) / (half - 1)))
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


# ----------------------------------------------------------------------------------------------------------------
# FIR resampling (StyleGAN2 upfirdn2d), NHWC.


def fir_kernel_2d(taps: Sequence[float]) -> np.ndarray:
    """Normalised 2-D FIR kernel from 1-D taps (outer product) or a 2-D array; sums to 1."""
    k = np.asarray(taps, dtype=np.float64)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"fir_kernel must be 1-D taps or a square 2-D kernel; got shape {k.shape}.")
    return k / k.sum()


def upfirdn2d(
    x: jax.Array, kernel: np.ndarray, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0),
    precision: Precision = HIGHEST,
):  # fmt: skip
    """Zero-insertion upsample by `up`, pad by `pad` (before, after), filter with `kernel`, keep every `down`-th pixel.

    `x`: `[B, H, W, C]`; `kernel`: `[k, k]` applied as a true (flipped) convolution to each channel separately.
    Output: `[B, (H·up + pad0 + pad1 − k) // down + 1, …, C]`, exactly as upstream's `upfirdn2d_native`.
    """
    channels = x.shape[-1]
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    weight = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, channels)), dtype=x.dtype)
    # lhs_dilation puts up-1 zeros *between* pixels; upstream also appends them after the last pixel.
    before, after = pad
    padding = ((before, after + up - 1), (before, after + up - 1))
    return jax.lax.conv_general_dilated(
        x,
        weight,
        window_strides=(down, down),
        padding=padding,
        lhs_dilation=(up, up),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=precision,
    )


def upsample_2d(x: jax.Array, taps: Sequence[float], factor: int = 2, *, precision: Precision = HIGHEST) -> jax.Array:
    """FIR upsampling `[B, H, W, C] -> [B, H·factor, W·factor, C]` (constant images stay constant)."""
    kernel = fir_kernel_2d(taps) * factor**2
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2), precision=precision)


def downsample_2d(x: jax.Array, taps: Sequence[float], factor: int = 2, *, precision: Precision = HIGHEST) -> jax.Array:
    """FIR downsampling `[B, H, W, C] -> [B, H/factor, W/factor, C]`."""
    kernel = fir_kernel_2d(taps)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2), precision=precision)


def upsample_conv_2d(
    x: jax.Array, kernel_hwio: jax.Array, taps: Sequence[float], factor: int = 2, *, precision: Precision = HIGHEST
) -> jax.Array:
    """Transposed convolution (stride `factor`) followed by FIR filtering: StyleGAN2's fused upsample + conv.

    A stride-f transposed convolution with upstream's flipped/transposed weight equals a plain cross-correlation
    of the f-dilated input, padded by k−1 on each side, with the original `[k, k, C_in, C_out]` kernel.
    """
    k = kernel_hwio.shape[0]
    h = jax.lax.conv_general_dilated(
        x,
        kernel_hwio,
        window_strides=(1, 1),
        padding=((k - 1, k - 1), (k - 1, k - 1)),
        lhs_dilation=(factor, factor),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )
    fir = fir_kernel_2d(taps) * factor**2
    p = (fir.shape[0] - factor) - (k - 1)
    return upfirdn2d(h, fir, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), precision=precision)


def conv_downsample_2d(
    x: jax.Array, kernel_hwio: jax.Array, taps: Sequence[float], factor: int = 2, *, precision: Precision = HIGHEST
) -> jax.Array:
    """FIR filtering followed by a stride-`factor` VALID convolution: StyleGAN2's fused conv + downsample."""
    k = kernel_hwio.shape[0]
    fir = fir_kernel_2d(taps)
    p = (fir.shape[0] - factor) + (k - 1)
    h = upfirdn2d(x, fir, pad=((p + 1) // 2, p // 2), precision=precision)
    return jax.lax.conv_general_dilated(
        h, kernel_hwio, window_strides=(factor, factor), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )  # fmt: skip


def naive_upsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling `[B, H, W, C] -> [B, H·f, W·f, C]`."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: jax.Array, factor: int = 2) -> jax.Array:
    """Average pooling over non-overlapping `factor`×`factor` windows."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
