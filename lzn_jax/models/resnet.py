"""SimCLRv2-style ResNet encoder of LZN case study 2 (official `lzn/model/resnet.py`), NHWC.

Differences from a torchvision ResNet, all as upstream: GroupNorm (32 groups, eps 1e-5) instead of BatchNorm (no
batch statistics anywhere), input images mapped from [-1, 1] to [0, 1], the last GroupNorm of every bottleneck
zero-initialised (each block starts as its shortcut), optional selective-kernel convolutions (`sk_ratio > 0`),
global average pooling, and a contrastive head of `head_num_layers` bias-free Dense + GroupNorm layers (ReLU
between) whose output is the anchor.

Convolutions use torch's explicit symmetric padding ((k − 1) // 2), not SAME, so converted checkpoints give the
same outputs on even-sized inputs; initialisation is torch's default (kaiming-uniform, a = sqrt(5)).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from lzn_jax.models.layers import torch_default_kernel_init

Dtype = Any
Precision = Any  # jax.lax.PrecisionLike: None, "default", "high", "highest" or a lax.Precision

STAGE_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
BASIC_DEPTHS = (18, 34)  # torchvision's basic-block ResNets (3x3, 3x3), for small images and CPU runs
EXPANSION = 4  # bottleneck output channels = EXPANSION x its inner width


def _conv(
    features: int, kernel: int, stride: int = 1, *, name: str, dtype: Dtype, param_dtype: Dtype, precision: Precision
) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=torch_default_kernel_init,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        name=name,
    )


def _norm(*, name: str, zero_scale: bool = False, dtype: Dtype, param_dtype: Dtype, precision: Precision = None) -> nn.GroupNorm:
    del precision  # no matmul: accepted so that a block passes one set of numeric fields to its convs and norms
    return nn.GroupNorm(
        num_groups=32,
        epsilon=1e-5,
        use_fast_variance=False,  # two-pass variance, as torch
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class SelectiveKernel(nn.Module):
    """SK convolution: two 3x3 branches (one conv of 2x width) mixed by a softmax attention over branches."""

    features: int
    stride: int
    sk_ratio: float
    min_dim: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        x = nn.relu(_norm(name="main_norm", **kw)(_conv(2 * self.features, 3, self.stride, name="main_conv", **kw)(x)))
        branches = jnp.stack(jnp.split(x, 2, axis=-1))  # [2, B, H, W, C]
        pooled = branches.sum(axis=0).mean(axis=(1, 2), keepdims=True)
        mid = max(int(self.features * self.sk_ratio), self.min_dim)
        m = nn.relu(_norm(name="mix_norm", **kw)(_conv(mid, 1, name="mix_conv0", **kw)(pooled)))
        m = jnp.stack(jnp.split(_conv(2 * self.features, 1, name="mix_conv1", **kw)(m), 2, axis=-1))
        return (branches * jax.nn.softmax(m.astype(jnp.float32), axis=0).astype(branches.dtype)).sum(axis=0)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride; or SK) -> 1x1 (x4 channels) with GroupNorm, plus a (projected) shortcut; ReLU after."""

    features: int
    stride: int = 1
    sk_ratio: float = 0.0
    use_projection: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        out = self.features * EXPANSION
        shortcut = x
        if self.use_projection:
            if self.sk_ratio > 0:  # SimCLRv2: average-pool then 1x1 conv instead of a strided 1x1 conv
                shortcut = jnp.pad(shortcut, ((0, 0), (0, 1), (0, 1), (0, 0)))
                shortcut = nn.avg_pool(shortcut, (2, 2), strides=(self.stride, self.stride))
                shortcut = _conv(out, 1, name="projection_conv", **kw)(shortcut)
            else:
                shortcut = _conv(out, 1, self.stride, name="projection_conv", **kw)(shortcut)
            shortcut = _norm(name="projection_norm", **kw)(shortcut)
        h = nn.relu(_norm(name="norm0", **kw)(_conv(self.features, 1, name="conv0", **kw)(x)))
        if self.sk_ratio > 0:
            h = SelectiveKernel(self.features, self.stride, self.sk_ratio, name="sk", **kw)(h)
        else:
            h = nn.relu(_norm(name="norm1", **kw)(_conv(self.features, 3, self.stride, name="conv1", **kw)(h)))
        h = _norm(name="norm2", zero_scale=True, **kw)(_conv(out, 1, name="conv2", **kw)(h))
        return nn.relu(shortcut + h)


class BasicBlock(nn.Module):
    """3x3 (stride) -> 3x3 with GroupNorm, plus a (projected) shortcut; the last GroupNorm zero-initialised."""

    features: int
    stride: int = 1
    sk_ratio: float = 0.0  # unused: the selective kernel variant exists for bottlenecks only
    use_projection: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        shortcut = x
        if self.use_projection:
            shortcut = _norm(name="projection_norm", **kw)(_conv(self.features, 1, self.stride, name="projection_conv", **kw)(x))
        h = nn.relu(_norm(name="norm0", **kw)(_conv(self.features, 3, self.stride, name="conv0", **kw)(x)))
        h = _norm(name="norm1", zero_scale=True, **kw)(_conv(self.features, 3, name="conv1", **kw)(h))
        return nn.relu(shortcut + h)


class ResNetEncoder(nn.Module):
    """Image -> anchor: `enc.apply({"params": p}, x [B, H, W, 3], apply_head=True, train=bool) -> [B, latent_dim]`.

    With `apply_head=False` it returns the pooled `[B, 2048·width_multiplier]` feature (512· for depths 18, 34)
    used for linear probing.
    `latent_dim` is the official `head_out_dim`. `remat=True` rematerialises every bottleneck block in the
    backward pass (the official code checkpoints the network in segments) to trade compute for memory.
    `train` is accepted for the common encoder interface; the network has no dropout or batch statistics.

    `stage_blocks` (the official `layers` argument) overrides the blocks per stage of `depth` (which still
    chooses the block: basic for 18 and 34, bottleneck otherwise); e.g. `stage_blocks=(1, 1, 1, 1)` with
    `base_width=32` is the official `ResNet(layers=[1, 1, 1, 1], width_multiplier=0.5)` of the step references.
    `base_width` is the official 64·width_multiplier (a multiple of 32 for GroupNorm), so fractional official
    multipliers map onto it.

    Beyond the official networks: depths 18 and 34 (basic blocks) and `small_images` (a 3x3 stride-1 stem without
    max-pooling, as for CIFAR) for small images such as the digits CPU configs.

    `precision` is the matmul/conv precision (`jax.lax.Precision` or its name): "highest" computes float32
    products in float32 as the official run does; "default" lets TPUs use single bfloat16 passes.
    """

    # The `:runlocal` preset (configs/common.runlocal): one basic block per stage (a ResNet-10) at width 1.
    TINY: ClassVar[dict] = dict(width_multiplier=1, depth=18, stage_blocks=(1, 1, 1, 1))

    latent_dim: int = 128
    depth: int = 50
    width_multiplier: int = 1
    sk_ratio: float = 0.0
    head_num_layers: int = 3
    remat: bool = False
    base_width: int = 64
    small_images: bool = False
    stage_blocks: tuple[int, ...] | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: Precision = "highest"

    @nn.nowrap
    def example_inputs(self, image_size: int, num_channels: int) -> tuple:
        """Positional `init` arguments of batch size 1 (enough to trace the parameter shapes)."""
        return (jnp.zeros((1, image_size, image_size, num_channels), jnp.float32),)

    @nn.nowrap
    def check_image_size(self, image_size: int, where: str) -> None:
        """ValueError unless a pixel is left after the total stride (8 with the small-image stem, else 32)."""
        stride = 8 if self.small_images else 32
        if image_size < stride:
            raise ValueError(
                f"data.image_size={image_size} is too small for {where}: the ResNet (small_images={self.small_images}) "
                f"downsamples {stride}x. Use image_size >= {stride}"
                + ("." if self.small_images else " or small_images=True (a stride-1 stem for small images).")
            )

    def _stem(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        channels = self.base_width * self.width_multiplier // 2
        if self.small_images:
            return nn.relu(_norm(name="stem_norm", **kw)(_conv(2 * channels, 3, name="stem_conv", **kw)(x)))
        if self.sk_ratio > 0:  # three 3x3 convs replace the 7x7 conv
            x = nn.relu(_norm(name="stem_norm0", **kw)(_conv(channels, 3, 2, name="stem_conv0", **kw)(x)))
            x = nn.relu(_norm(name="stem_norm1", **kw)(_conv(channels, 3, name="stem_conv1", **kw)(x)))
            x = _conv(2 * channels, 3, name="stem_conv2", **kw)(x)
        else:
            x = _conv(2 * channels, 7, 2, name="stem_conv", **kw)(x)
        x = nn.relu(_norm(name="stem_norm", **kw)(x))
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        """Blocks in each of the four stages: `stage_blocks`, else the standard counts of `depth`."""
        return tuple(self.stage_blocks) if self.stage_blocks is not None else STAGE_DEPTHS[self.depth]

    @property
    def _basic(self) -> bool:
        return self.depth in BASIC_DEPTHS

    def _head(self, h: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        for i in range(self.head_num_layers):
            last = i == self.head_num_layers - 1
            width = self.latent_dim if last else h.shape[-1]
            h = nn.Dense(width, use_bias=False, kernel_init=torch_default_kernel_init, name=f"head_dense{i}", **kw)(h)
            h = _norm(name=f"head_norm{i}", **kw)(h)
            if not last:
                h = nn.relu(h)
        return h

    @nn.compact
    def __call__(self, x: jax.Array, *, apply_head: bool = True, train: bool = False) -> jax.Array:
        if self.depth not in STAGE_DEPTHS:
            raise ValueError(f"depth={self.depth} is not supported; use one of {sorted(STAGE_DEPTHS)}.")
        if self.stage_blocks is not None and (
            len(self.stage_blocks) != 4 or any(not isinstance(n, int) or n < 1 for n in self.stage_blocks)
        ):
            raise ValueError(f"stage_blocks={self.stage_blocks!r} must be four positive ints (blocks per stage) or None.")
        if x.ndim != 4:
            raise ValueError(f"ResNetEncoder expects images [B, H, W, C]; got shape {x.shape}.")
        if apply_head and (self.latent_dim % 32 or self.latent_dim < 64):
            raise ValueError(
                f"latent_dim={self.latent_dim} must be a multiple of 32 and at least 64: the head's GroupNorm has 32 "
                "groups, and groups of one feature normalise every output to its bias."
            )
        if self.base_width % 32:
            raise ValueError(f"base_width={self.base_width} must be a multiple of 32 (GroupNorm has 32 groups).")
        block_cls = BasicBlock if self.depth in BASIC_DEPTHS else BottleneckBlock
        block_cls = nn.remat(block_cls) if self.remat else block_cls
        h = self._stem((x.astype(self.dtype) + 1.0) / 2.0)
        for stage, num_blocks in enumerate(self.blocks_per_stage):
            for b in range(num_blocks):
                h = block_cls(
                    features=self.base_width * 2**stage * self.width_multiplier,
                    stride=2 if (b == 0 and stage > 0) else 1,
                    sk_ratio=self.sk_ratio,
                    # a bottleneck widens 4x from the first block on; a basic block only when a stage downsamples
                    use_projection=b == 0 and (stage > 0 or not self._basic),
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    precision=self.precision,
                    name=f"stage{stage}_block{b}",
                )(h)
        h = h.mean(axis=(1, 2))
        return self._head(h) if apply_head else h
