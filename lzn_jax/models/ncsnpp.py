"""NCSN++ networks of LZN: the image encoder (`NCSNPPEncoder`) and the rectified-flow decoder (`NCSNPPDecoder`).

Both follow the official `lzn/model/ncsnpp.py` (itself score_sde's NCSN++ with LZN's conditioning) layer for layer,
so parameter counts and converted checkpoints match upstream. Images are NHWC.

Shared structure (the "contracting path"): a 3x3 input conv, then per resolution level `num_res_blocks` residual
blocks (self-attention after each block at `attn_resolutions`), then a downsampling step between levels (a BigGAN
block with `down=True`, or a plain `Downsample` for DDPM blocks) optionally merged with a downsampled copy of the
input (`progressive_input`), and finally a middle block: residual block, attention, residual block.

Submodule names (`conv_in`, `down{level}_res{i}`, `mid_attn`, `up{level}_res{i}`, …) say where a layer sits; level 0
is the full resolution. `lzn_jax/convert.py` maps the official `all_modules.{index}` names onto them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from lzn_jax.models import layers, layerspp

Dtype = Any

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("positional", "fourier")
# The decoder's time input is t·999 (the rectified-flow codebase reuses DDPM's 1000-step positional embedding).
TIME_SCALE = 999.0


def _width(h: jax.Array) -> int:
    """The resolution upstream tests against `attn_resolutions` (`h.shape[-1]` of an NCHW tensor)."""
    return h.shape[2]


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not supported; use one of {choices}.")


def _check_resolutions(wanted, sizes, where, image_size) -> None:
    missing = sorted(set(wanted) - set(sizes))
    if missing:
        raise ValueError(
            f"{where}={tuple(wanted)}: the network never has resolution(s) {missing} at data.image_size={image_size} "
            f"(its feature maps are {sizes}); choose among those sizes."
        )


class NCSNPPTrunk(nn.Module):
    """Base class: architecture fields shared by encoder and decoder, and the contracting path they both run.

    Defaults are the CIFAR-10 architecture of the official configs (case studies 1 and 3).
    """

    # The `:runlocal` preset (configs/common.runlocal): fields that make the network tiny but keep its code paths.
    TINY: ClassVar[dict] = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, fir=False,
                                progressive_input="none")  # fmt: skip

    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.15
    resamp_with_conv: bool = True
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: layers.Precision = layers.HIGHEST
    # Rematerialise every residual block in the backward pass (jax.checkpoint): its activations are recomputed
    # instead of stored, for about one more forward pass of compute. Same params and gradients.
    remat: bool = False

    @property
    def _kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)

    def _resblock(self, name: str, out_ch: int | None = None, *, up: bool = False, down: bool = False) -> nn.Module:
        common = dict(
            nonlinearity=self.nonlinearity,
            out_ch=out_ch,
            dropout=self.dropout,
            skip_rescale=self.skip_rescale,
            init_scale=self.init_scale,
            name=name,
            **self._kw,
        )
        if self.resblock_type == "ddpm":
            cls, fields = layerspp.ResnetBlockDDPMpp, common
        else:
            cls, fields = layerspp.ResnetBlockBigGANpp, dict(up=up, down=down, fir=self.fir, fir_kernel=self.fir_kernel,
                                                              **common)  # fmt: skip
        if self.remat:  # called as block(x, temb, train): `train` (argument 3, self being 0) picks dropout's branch
            cls = nn.remat(cls, static_argnums=(3,))
        return cls(**fields)

    def _attn(self, name: str) -> nn.Module:
        return layerspp.AttnBlockpp(skip_rescale=self.skip_rescale, init_scale=self.init_scale, name=name, **self._kw)

    @nn.nowrap
    def check_image_size(self, image_size: int, where: str) -> list[int]:
        """ValueError unless the network takes `image_size` x `image_size` images (`where`: its config section).

        NCSN++ halves the feature map between levels and doubles it back: the size must halve exactly at every
        level, and the attention (and anchor-head) resolutions must be sizes that occur. Returns those sizes.
        """
        factor = 2 ** (len(self.ch_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"data.image_size={image_size} does not fit {where}: ch_mult={tuple(self.ch_mult)} halves the image "
                f"{len(self.ch_mult) - 1} times, so the size must be a multiple of {factor} (e.g. "
                f"{max(factor, image_size // factor * factor)}); or change ch_mult."
            )
        sizes = [image_size // 2**level for level in range(len(self.ch_mult))]
        _check_resolutions(self.attn_resolutions, sizes, f"{where}.attn_resolutions", image_size)
        return sizes

    def _check_trunk_fields(self) -> None:
        _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
        _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        _check_choice("progressive_combine", self.progressive_combine, ("sum", "cat"))
        layers.activation(self.nonlinearity)

    def contracting_path(
        self, x: jax.Array, temb: jax.Array | None, train: bool
    ) -> tuple[list[jax.Array], jax.Array]:
        """`x [B, H, W, C]` -> (skip activations, in upstream's `hs` order; output of the middle block).

        Call from inside a compact `__call__`: the submodules are created in the caller's scope.
        """
        self._check_trunk_fields()
        num_levels = len(self.ch_mult)
        pyramid = x if self.progressive_input != "none" else None
        hs = [layers.conv3x3(self.nf, name="conv_in", **self._kw)(x.astype(self.dtype))]
        for level in range(num_levels):
            for i in range(self.num_res_blocks):
                h = self._resblock(f"down{level}_res{i}", self.nf * self.ch_mult[level])(hs[-1], temb, train)
                if _width(h) in self.attn_resolutions:
                    h = self._attn(f"down{level}_attn{i}")(h)
                hs.append(h)
            if level == num_levels - 1:
                continue
            name = f"down{level}_resample"
            if self.resblock_type == "ddpm":
                h = layerspp.Downsample(
                    with_conv=self.resamp_with_conv, fir=self.fir, fir_kernel=self.fir_kernel, name=name, **self._kw
                )(hs[-1])
            else:
                h = self._resblock(name, down=True)(hs[-1], temb, train)
            if self.progressive_input == "input_skip":
                pyramid = layerspp.Downsample(fir=self.fir, fir_kernel=self.fir_kernel, **self._kw)(pyramid)
                h = layerspp.Combine(method=self.progressive_combine, name=f"down{level}_combine", **self._kw)(
                    pyramid, h
                )
            elif self.progressive_input == "residual":
                pyramid = layerspp.Downsample(
                    out_ch=h.shape[-1],
                    with_conv=True,
                    fir=self.fir,
                    fir_kernel=self.fir_kernel,
                    name=f"down{level}_pyramid",
                    **self._kw,
                )(pyramid)
                pyramid = layerspp.merge_skip(pyramid, h, self.skip_rescale)
                h = pyramid
            hs.append(h)

        h = self._resblock("mid_res0")(hs[-1], temb, train)
        h = self._attn("mid_attn")(h)
        h = self._resblock("mid_res1")(h, temb, train)
        return hs, h


class _LatentHead(nn.Module):
    """One level's anchor contribution: 1x1 conv + act, flatten, MLP `[B, H·W·num_base_channels] -> [B, latent_dim]`.

    The MLP has `num_layers` Dense layers (hidden width `num_base_units`, activation between them) with torch's
    default initialisation, as upstream leaves these `nn.Linear`s alone.
    """

    latent_dim: int
    num_base_channels: int
    num_base_units: int
    num_layers: int
    nonlinearity: str = "swish"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    precision: layers.Precision = layers.HIGHEST

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        act = layers.activation(self.nonlinearity)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        h = act(layers.conv1x1(self.num_base_channels, name="Conv_0", **kw)(h))
        h = h.reshape(h.shape[0], -1)
        widths = [self.num_base_units] * (self.num_layers - 1) + [self.latent_dim]
        for i, width in enumerate(widths):
            if i > 0:
                h = act(h)
            h = nn.Dense(
                width,
                kernel_init=layers.torch_default_kernel_init,
                bias_init=layers.torch_default_bias_init(h.shape[-1]),
                name=f"Dense_{i}",
                **kw,
            )(h)
        return h


class NCSNPPEncoder(NCSNPPTrunk, kw_only=True):
    """Image -> anchor: `enc.apply({"params": p}, x [B, H, W, C], train=bool) -> [B, latent_dim]`.

    Runs the contracting path without time conditioning and, at every skip activation (and the middle block's
    output), maps the feature map through its own `_LatentHead`; the anchor is the sum over heads. Heads at
    resolutions outside `latent_transformation_resolutions` (when given) do not exist and contribute zero.
    """

    TINY: ClassVar[dict] = {**NCSNPPTrunk.TINY, "num_base_channels": 4, "num_base_units": 32,
                            "latent_transformation_resolutions": None}  # fmt: skip

    latent_dim: int
    num_base_channels: int = 20
    num_base_units: int = 200
    num_latent_transformation_layers: int = 2
    latent_transformation_resolutions: tuple[int, ...] | None = None

    @nn.nowrap
    def example_inputs(self, image_size: int, num_channels: int) -> tuple:
        """Positional `init` arguments of batch size 1 (enough to trace the parameter shapes)."""
        return (jnp.zeros((1, image_size, image_size, num_channels), jnp.float32),)

    @nn.nowrap
    def check_image_size(self, image_size: int, where: str) -> None:
        """The trunk's checks, and anchor heads only at resolutions that occur."""
        sizes = super().check_image_size(image_size, where)
        if self.latent_transformation_resolutions is not None:
            _check_resolutions(self.latent_transformation_resolutions, sizes,
                               f"{where}.latent_transformation_resolutions", image_size)  # fmt: skip

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"NCSNPPEncoder expects images [B, H, W, C]; got shape {x.shape}.")
        if self.num_latent_transformation_layers < 2:
            raise ValueError(
                "num_latent_transformation_layers must be >= 2 (the head always has an input and an output "
                f"layer); got {self.num_latent_transformation_layers}."
            )
        hs, h = self.contracting_path(x, None, train)
        sum_dtype = jnp.promote_types(self.dtype, jnp.float32)  # sum the heads in at least float32
        anchor = jnp.zeros((x.shape[0], self.latent_dim), sum_dtype)
        for i, feature in enumerate([*hs, h]):
            allowed = self.latent_transformation_resolutions
            if allowed is not None and _width(feature) not in allowed:
                continue
            head = _LatentHead(
                latent_dim=self.latent_dim,
                num_base_channels=self.num_base_channels,
                num_base_units=self.num_base_units,
                num_layers=self.num_latent_transformation_layers,
                nonlinearity=self.nonlinearity,
                name=f"head{i}",
                **self._kw,
            )
            anchor = anchor + head(feature).astype(sum_dtype)
        return anchor.astype(self.dtype)


class NCSNPPDecoder(NCSNPPTrunk, kw_only=True):
    """Rectified-flow velocity network: `dec.apply({"params": p}, latent, label, t, xt, train=bool) -> [B, H, W, C]`.

    Inputs: `latent [B, latent_dim]` (None only when `latent_dim == 0`), `label [B, num_classes]` one-hot (None
    when `num_classes == 0`), `t [B]` in [0, 1] (clipped, then scaled by 999), `xt [B, H, W, C]`.
    The time embedding (sinusoidal of 999·t with `nf` dims, or Gaussian Fourier features of log(999·t) with
    `2·nf` dims) is concatenated after latent and label (only if `time_conditional`), and two Dense layers
    (`nf·4` wide, activation between) turn that into the vector every residual block is conditioned on.
    `scale_by_sigma` (Fourier only, as upstream configs use it) divides the output by 999·t. Both take log/1/t,
    so t must stay away from 0 with Fourier features, as upstream's samplers ensure (t >= 1e-3).
    """

    TINY: ClassVar[dict] = {**NCSNPPTrunk.TINY, "progressive": "none"}

    latent_dim: int
    num_classes: int = 0
    time_conditional: bool = True
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    progressive: str = "none"
    scale_by_sigma: bool = False

    @nn.nowrap
    def example_inputs(self, image_size: int, num_channels: int) -> tuple:
        """Positional `init` arguments of batch size 1: (latent | None, label | None, t, xt)."""
        latent = jnp.zeros((1, self.latent_dim)) if self.latent_dim else None
        label = jnp.zeros((1, self.num_classes)) if self.num_classes else None
        return latent, label, jnp.full((1,), 0.5), jnp.zeros((1, image_size, image_size, num_channels), jnp.float32)

    def _check_inputs(self, latent, label, t, xt) -> None:
        if xt.ndim != 4:
            raise ValueError(f"NCSNPPDecoder expects xt [B, H, W, C]; got shape {xt.shape}.")
        batch = xt.shape[0]
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [B]=({batch},); got {t.shape}.")
        for arg, value, dim in (("latent", latent, self.latent_dim), ("label", label, self.num_classes)):
            if value is None and dim > 0:
                raise ValueError(f"{arg} is None but the decoder was built with a {arg} size of {dim}.")
            if value is not None and value.shape != (batch, dim):
                raise ValueError(
                    f"{arg} must have shape [B, {dim}]=({batch}, {dim}); got {value.shape}"
                    + (" (pass None: this decoder takes no such input)." if dim == 0 else ".")
                )

    def _conditioning(self, latent, label, t) -> tuple[jax.Array, jax.Array]:
        """Returns (the `[B, nf·4]` conditioning vector, the noise level `999·t`)."""
        sigma = jnp.clip(t.astype(jnp.promote_types(t.dtype, jnp.float32)), 0.0, 1.0) * TIME_SCALE
        if self.embedding_type == "fourier":
            temb = layerspp.GaussianFourierProjection(
                self.nf, scale=self.fourier_scale, param_dtype=self.param_dtype, name="time_fourier"
            )(jnp.log(sigma))
        else:
            temb = layers.timestep_embedding(sigma, self.nf)
        parts = [p for p in (latent, label) if p is not None]
        if self.time_conditional:
            parts.append(temb)
        if not parts:
            raise ValueError("The decoder has nothing to condition on: latent_dim=0, num_classes=0 and no time input.")
        cond = jnp.concatenate([p.astype(jnp.promote_types(p.dtype, jnp.float32)) for p in parts], axis=-1)
        act = layers.activation(self.nonlinearity)
        cond = layers.dense(self.nf * 4, name="cond_dense0", **self._kw)(cond)
        cond = layers.dense(self.nf * 4, name="cond_dense1", **self._kw)(act(cond))
        return cond, sigma

    @nn.compact
    def __call__(
        self,
        latent: jax.Array | None,
        label: jax.Array | None,
        t: jax.Array,
        xt: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        _check_choice("progressive", self.progressive, PROGRESSIVE)
        if self.scale_by_sigma and self.embedding_type != "fourier":
            raise ValueError("scale_by_sigma=True needs embedding_type='fourier' (the only pairing upstream uses).")
        self._check_inputs(latent, label, t, xt)
        temb, sigma = self._conditioning(latent, label, t)
        hs, h = self.contracting_path(xt, temb, train)
        h = self._expanding_path(hs, h, temb, xt.shape[-1], train)
        if self.scale_by_sigma:
            h = h / sigma.astype(h.dtype)[:, None, None, None]
        return h

    def _expanding_path(self, hs, h, temb, out_channels: int, train: bool) -> jax.Array:
        """Upsampling half of the U-Net, consuming the skip activations `hs` (last first)."""
        act = layers.activation(self.nonlinearity)
        kw = self._kw
        num_levels = len(self.ch_mult)
        hs = list(hs)
        pyramid = None
        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = self._resblock(f"up{level}_res{i}", self.nf * self.ch_mult[level])(h, temb, train)
            if _width(h) in self.attn_resolutions:
                h = self._attn(f"up{level}_attn")(h)
            if self.progressive != "none":
                h, pyramid = self._output_pyramid(level, h, pyramid, out_channels)
            if level != 0:
                name = f"up{level}_resample"
                if self.resblock_type == "ddpm":
                    h = layerspp.Upsample(
                        with_conv=self.resamp_with_conv, fir=self.fir, fir_kernel=self.fir_kernel, name=name, **kw
                    )(h)
                else:
                    h = self._resblock(name, up=True)(h, temb, train)
        if self.progressive == "output_skip":
            return pyramid
        h = act(layers.group_norm(h.shape[-1], name="out_norm", **kw)(h))
        return layers.conv3x3(out_channels, init_scale=self.init_scale, name="out_conv", **kw)(h)

    def _output_pyramid(self, level, h, pyramid, out_channels):
        """Progressive output path at one level: returns the (possibly updated) `h` and the pyramid."""
        act = layers.activation(self.nonlinearity)
        kw = self._kw
        top = level == len(self.ch_mult) - 1
        if self.progressive == "output_skip":
            branch = act(layers.group_norm(h.shape[-1], name=f"up{level}_pyramid_norm", **kw)(h))
            conv = layers.conv3x3(out_channels, init_scale=self.init_scale, name=f"up{level}_pyramid_conv", **kw)
            branch = conv(branch)
            if top:
                return h, branch
            pyramid = layerspp.Upsample(fir=self.fir, fir_kernel=self.fir_kernel, **kw)(pyramid)
            return h, pyramid + branch
        # progressive == "residual"
        if top:
            branch = act(layers.group_norm(h.shape[-1], name=f"up{level}_pyramid_norm", **kw)(h))
            return h, layers.conv3x3(h.shape[-1], name=f"up{level}_pyramid_conv", **kw)(branch)
        pyramid = layerspp.Upsample(
            out_ch=h.shape[-1],
            with_conv=True,
            fir=self.fir,
            fir_kernel=self.fir_kernel,
            name=f"up{level}_pyramid_up",
            **kw,
        )(pyramid)
        pyramid = layerspp.merge_skip(pyramid, h, self.skip_rescale)
        return pyramid, pyramid
