"""Converter: official state dicts and checkpoints -> Flax params, error reports, EMA order, the CLI and Orbax.

The first half re-derives the official PyTorch state dicts (key -> shape, in `state_dict()` order) from the
official constructors (`lzn/model/ncsnpp.py`, `ncsnpp_lib/layerspp.py`, `lzn/model/resnet.py`,
`lzn/label_anchor/label_anchor.py`), independently of lzn_jax's models and converter. The tests use it to
cross-check parameter counts and to feed every config's full official key set through the converter.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lzn_jax import config_files, convert, models

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("joint_cifar10", "gen_cifar10", "gen_afhq_cat", "gen_celebahq", "gen_lsun_bedroom", "repr_imagenet")

# ----------------------------------------------------------------------------------------------------------------
# The official state dicts, re-derived.

Shapes = dict[str, tuple[int, ...]]


def _conv(prefix: str, out_ch: int, in_ch: int, k: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (out_ch, in_ch, k, k)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_ch,)
    return shapes


def _norm(prefix: str, ch: int) -> Shapes:
    return {f"{prefix}.weight": (ch,), f"{prefix}.bias": (ch,)}


def _linear(prefix: str, out_f: int, in_f: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (out_f, in_f)}
    if bias:
        shapes[f"{prefix}.bias"] = (out_f,)
    return shapes


def _nin(prefix: str, in_ch: int, out_ch: int) -> Shapes:
    return {f"{prefix}.W": (in_ch, out_ch), f"{prefix}.b": (out_ch,)}


def _resblock(kind: str, in_ch: int, out_ch: int | None, temb_dim: int | None, resample: bool = False) -> Shapes:
    """ResnetBlockBigGANpp / ResnetBlockDDPMpp (conv_shortcut=False) parameters, relative names."""
    out_ch = out_ch or in_ch
    s = {**_norm("GroupNorm_0", in_ch), **_conv("Conv_0", out_ch, in_ch, 3)}
    if temb_dim is not None:
        s.update(_linear("Dense_0", out_ch, temb_dim))
    s.update({**_norm("GroupNorm_1", out_ch), **_conv("Conv_1", out_ch, out_ch, 3)})
    if kind == "biggan" and (in_ch != out_ch or resample):
        s.update(_conv("Conv_2", out_ch, in_ch, 1))
    if kind == "ddpm" and in_ch != out_ch:
        s.update(_nin("NIN_0", in_ch, out_ch))
    return s


def _attn(ch: int) -> Shapes:
    s = _norm("GroupNorm_0", ch)
    for i in range(4):
        s.update(_nin(f"NIN_{i}", ch, ch))
    return s


def _resample_conv(fir: bool, out_ch: int, in_ch: int) -> Shapes:
    """Upsample/Downsample with a conv: `Conv2d_0` (FIR) or `Conv_0`."""
    return _conv("Conv2d_0" if fir else "Conv_0", out_ch, in_ch, 3)


def _down_path(m: Mapping[str, Any], image_size: int, channels: int, temb_dim: int | None):
    """`all_modules` entries of the contracting path (as lists of relative shapes) and the skip channels."""
    nf, mult, kind = m["nf"], m["ch_mult"], m["resblock_type"]
    modules = [_conv("x", nf, channels, 3)]
    hs_c, skip_res = [nf], [image_size]
    in_ch, pyramid_ch = nf, channels
    for level in range(len(mult)):
        res = image_size // 2**level
        for _ in range(m["num_res_blocks"]):
            out_ch = nf * mult[level]
            modules.append(_resblock(kind, in_ch, out_ch, temb_dim))
            in_ch = out_ch
            if res in m["attn_resolutions"]:
                modules.append(_attn(in_ch))
            hs_c.append(in_ch)
            skip_res.append(res)
        if level != len(mult) - 1:
            if kind == "ddpm":
                modules.append(_resample_conv(m["fir"], in_ch, in_ch) if m["resamp_with_conv"] else {})
            else:
                modules.append(_resblock(kind, in_ch, None, temb_dim, resample=True))
            if m["progressive_input"] == "input_skip":
                modules.append(_conv("Conv_0", in_ch, pyramid_ch, 1))
                if m["progressive_combine"] == "cat":
                    in_ch *= 2
            elif m["progressive_input"] == "residual":
                modules.append(_resample_conv(m["fir"], in_ch, pyramid_ch))
                pyramid_ch = in_ch
            hs_c.append(in_ch)
            skip_res.append(res // 2)
    in_ch = hs_c[-1]
    modules += [_resblock(kind, in_ch, None, temb_dim), _attn(in_ch), _resblock(kind, in_ch, None, temb_dim)]
    return modules, hs_c, skip_res


def _prefix(index: int, relative: Shapes) -> Shapes:
    """Names relative to an `all_modules` entry; a bare layer (conv/linear/norm) uses `x.` as placeholder."""
    out = {}
    for key, shape in relative.items():
        key = key[2:] if key.startswith("x.") else key
        out[f"all_modules.{index}.{key}"] = shape
    return out


def official_ncsnpp_encoder(m: Mapping[str, Any], image_size: int, channels: int) -> Shapes:
    """`lzn.model.ncsnpp.NCSNPPEncoder` state dict; `m` holds lzn_jax's field names (same values as upstream)."""
    modules, hs_c, skip_res = _down_path(m, image_size, channels, None)
    base_c, base_u, depth = m["num_base_channels"], m["num_base_units"], m["num_latent_transformation_layers"]
    allowed = m.get("latent_transformation_resolutions")
    spatial, latent = {}, {}
    for i, (ch, res) in enumerate(zip(hs_c + [hs_c[-1]], skip_res + [skip_res[-1]])):
        if allowed is not None and res not in allowed:
            continue
        spatial.update(_conv(f"spatial_transformations.{i}.0", base_c, ch, 1))
        latent.update(_linear(f"latent_transformations.{i}.0", base_u, base_c * res * res))
        for j in range(depth - 2):
            latent.update(_linear(f"latent_transformations.{i}.{2 * j + 2}", base_u, base_u))
        latent.update(_linear(f"latent_transformations.{i}.{2 * depth - 2}", m["latent_dim"], base_u))
    shapes = {**spatial, **latent}
    for index, relative in enumerate(modules):
        shapes.update(_prefix(index, relative))
    return shapes


def official_ncsnpp_decoder(m: Mapping[str, Any], image_size: int, channels: int, num_scales: int = 1000) -> Shapes:
    """`lzn.model.ncsnpp.NCSNPPDecoder` state dict (with its `sigmas` buffer of `num_scales` entries)."""
    nf, mult, kind, progressive = m["nf"], m["ch_mult"], m["resblock_type"], m["progressive"]
    fourier = m["embedding_type"] == "fourier"
    modules = [{"x.W": (nf,)}] if fourier else []
    cond_in = m["latent_dim"] + m["num_classes"] + (((2 if fourier else 1) * nf) if m["time_conditional"] else 0)
    modules += [_linear("x", 4 * nf, cond_in), _linear("x", 4 * nf, 4 * nf)]
    down, hs_c, _ = _down_path(m, image_size, channels, 4 * nf)
    modules += down
    in_ch, pyramid_ch = hs_c[-1], 0
    for level in reversed(range(len(mult))):
        for _ in range(m["num_res_blocks"] + 1):
            out_ch = nf * mult[level]
            modules.append(_resblock(kind, in_ch + hs_c.pop(), out_ch, 4 * nf))
            in_ch = out_ch
        if image_size // 2**level in m["attn_resolutions"]:
            modules.append(_attn(in_ch))
        if progressive != "none":
            top = level == len(mult) - 1
            if progressive == "output_skip":
                modules += [_norm("x", in_ch), _conv("x", channels, in_ch, 3)]
            elif top:  # residual
                modules += [_norm("x", in_ch), _conv("x", in_ch, in_ch, 3)]
                pyramid_ch = in_ch
            else:
                modules.append(_resample_conv(m["fir"], in_ch, pyramid_ch))
                pyramid_ch = in_ch
        if level != 0:
            if kind == "ddpm":
                modules.append(_resample_conv(m["fir"], in_ch, in_ch) if m["resamp_with_conv"] else {})
            else:
                modules.append(_resblock(kind, in_ch, None, 4 * nf, resample=True))
    if progressive != "output_skip":
        modules += [_norm("x", in_ch), _conv("x", channels, in_ch, 3)]
    shapes = {"sigmas": (num_scales,)}
    for index, relative in enumerate(modules):
        shapes.update(_prefix(index, relative))
    return shapes


def _gn(prefix: str, ch: int) -> Shapes:
    return _norm(f"{prefix}.0", ch)  # GroupNormRelu is Sequential(GroupNorm, ReLU | Identity)


def official_resnet(depth: int, width: int, sk_ratio: float, head_out_dim: int, head_num_layers: int) -> Shapes:
    """`lzn.model.resnet.get_resnet(...)` state dict."""
    layers = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3], 200: [3, 24, 36, 3]}[depth]
    s: Shapes = {}
    half = 64 * width // 2
    if sk_ratio > 0:
        s.update({**_conv("net.0.0", half, 3, 3, False), **_gn("net.0.1", half)})
        s.update({**_conv("net.0.2", half, half, 3, False), **_gn("net.0.3", half)})
        s.update({**_conv("net.0.4", 2 * half, half, 3, False), **_gn("net.0.5", 2 * half)})
    else:
        s.update({**_conv("net.0.0", 2 * half, 3, 7, False), **_gn("net.0.1", 2 * half)})
    in_ch = 64 * width
    for stage, num_blocks in enumerate(layers):
        mid = 64 * 2**stage * width
        for b in range(num_blocks):
            p = f"net.{stage + 1}.blocks.{b}"
            if b == 0:
                shortcut = f"{p}.projection.shortcut" + (".2" if sk_ratio > 0 else "")
                s.update({**_conv(shortcut, 4 * mid, in_ch, 1, False), **_gn(f"{p}.projection.bn", 4 * mid)})
            s.update({**_conv(f"{p}.net.0", mid, in_ch, 1, False), **_gn(f"{p}.net.1", mid)})
            if sk_ratio > 0:
                mix = max(int(mid * sk_ratio), 32)
                sk = f"{p}.net.2"
                s.update({**_conv(f"{sk}.main_conv.0", 2 * mid, mid, 3, False), **_gn(f"{sk}.main_conv.1", 2 * mid)})
                s.update({**_conv(f"{sk}.mixing_conv.0", mix, mid, 1, False), **_gn(f"{sk}.mixing_conv.1", mix)})
                s.update(_conv(f"{sk}.mixing_conv.2", 2 * mid, mix, 1, False))
                last = 3
            else:
                s.update({**_conv(f"{p}.net.2", mid, mid, 3, False), **_gn(f"{p}.net.3", mid)})
                last = 4
            s.update({**_conv(f"{p}.net.{last}", 4 * mid, mid, 1, False), **_gn(f"{p}.net.{last + 1}", 4 * mid)})
            in_ch = 4 * mid
    index = 0
    for i in range(head_num_layers):
        dim = head_out_dim if i == head_num_layers - 1 else in_ch
        s.update(_linear(f"head.layers.{index}", dim, in_ch, bias=False))
        s.update(_norm(f"head.layers.{index + 1}", dim))
        index += 3 if i != head_num_layers - 1 else 2
    return s


def official_label_anchor(num_classes: int, z_dim: int) -> Shapes:
    """`lzn.label_anchor.label_anchor.LabelAnchor` state dict."""
    return {"anchor": (num_classes, z_dim)}


def official_state_shapes(section: Mapping[str, Any], image_size: int, channels: int) -> Shapes:
    """The official state dict of one lzn_jax config model section (`{name: ..., **fields}`)."""
    name = section["name"]
    if name == "ncsnpp_encoder":
        return official_ncsnpp_encoder(section, image_size, channels)
    if name == "ncsnpp_decoder":
        return official_ncsnpp_decoder(section, image_size, channels)
    if name == "resnet":
        fields = ("depth", "width_multiplier", "sk_ratio", "latent_dim", "head_num_layers")
        return official_resnet(*(section[f] for f in fields))
    if name == "label_anchors":
        return official_label_anchor(section["num_classes"], section["latent_dim"])
    raise ValueError(f"no official module for {name!r}")


BUFFERS = ("sigmas",)


def official_num_parameters(shapes: Shapes) -> int:
    """What the official `num_parameters` reports: every parameter (frozen ones too), no buffers."""
    total = 0
    for key, shape in shapes.items():
        if key not in BUFFERS:
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


# ----------------------------------------------------------------------------------------------------------------
# Helpers.


def load_config(name: str):
    return config_files.load(str(REPO_ROOT / "configs" / f"{name}.py"))


def synthetic_state_dict(shapes: Shapes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors with the official names and shapes, in state-dict order."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}


def all_fields(section: Mapping[str, Any]) -> dict[str, Any]:
    """`section` completed with the module's defaults, as the official constructors see every option."""
    model = models.build(section)
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    return dict(fields, name=section["name"])


def flax_count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def shrunk(section: Mapping[str, Any]) -> dict[str, Any]:
    """The same architecture with few channels: every official key is still there, the arrays are small."""
    fields = dict(section)
    if fields["name"].startswith("ncsnpp"):
        fields.update(nf=8, latent_dim=6)
        if fields["name"] == "ncsnpp_encoder":
            fields.update(num_base_channels=2, num_base_units=4)
    return fields


def tiny_decoder_config():
    """An 8x8 AFHQ-style decoder (Fourier time features, FIR, progressive skips): the frozen-`W` case."""
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(image_size=8, num_channels=3))
    config.decoder = ml_collections.ConfigDict(
        dict(
            name="ncsnpp_decoder",
            latent_dim=4,
            nf=8,
            ch_mult=(1, 2),
            num_res_blocks=1,
            attn_resolutions=(4,),
            dropout=0.0,
            embedding_type="fourier",
            progressive="output_skip",
            progressive_input="input_skip",
            fir=True,
            scale_by_sigma=True,
        )
    )
    return config


# ----------------------------------------------------------------------------------------------------------------
# Cross-checks against the re-derived official state dicts.


def test_rederived_shapes_match_the_recorded_official_state_dicts(ncsnpp_small_file):
    """The re-derivation reproduces real official state dicts: same names, same order, same shapes."""
    ref = np.load(ncsnpp_small_file)
    cfg = json.loads(str(ref["config_json"]))
    size, channels = cfg["data"]["image_size"], cfg["data"]["num_channels"]
    encoder = dict(
        convert.official_ncsnpp_fields(cfg["model"], decoder=False),
        latent_dim=int(ref["latent_dim"]),
        num_base_channels=int(ref["encoder_num_base_channels"]),
        num_base_units=int(ref["encoder_num_base_units"]),
        num_latent_transformation_layers=int(ref["encoder_num_latent_layers"]),
    )
    key = "encoder_latent_transformation_resolutions"
    if key in ref.files:
        encoder["latent_transformation_resolutions"] = tuple(int(r) for r in ref[key])
    decoder = dict(
        convert.official_ncsnpp_fields(cfg["model"], decoder=True),
        latent_dim=int(ref["latent_dim"]),
        num_classes=int(ref["num_classes"]),
    )
    for prefix, expected in (
        ("encoder/", official_ncsnpp_encoder(encoder, size, channels)),
        ("decoder/", official_ncsnpp_decoder(decoder, size, channels, num_scales=cfg["model"]["num_scales"])),
    ):
        recorded = [(k[len(prefix) :], ref[k].shape) for k in ref.files if k.startswith(prefix)]
        assert recorded == list(expected.items())


@pytest.mark.slow  # 19 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", CONFIGS)
def test_flax_parameter_counts_equal_official_counts(name):
    config = load_config(name)
    size, channels = config.data.image_size, config.data.num_channels
    for fields in convert.model_sections(config).values():
        model = models.build(fields)
        official = official_state_shapes(dict(fields), size, channels)
        assert flax_count(convert.param_shapes(model, size, channels)) == official_num_parameters(official)


@pytest.mark.slow  # 22 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", CONFIGS)
def test_every_official_key_of_every_config_converts(name):
    config = load_config(name)
    size, channels = config.data.image_size, config.data.num_channels
    for section, complete in convert.model_sections(config).items():
        fields = shrunk(complete)
        model = models.build(fields)
        shapes = official_state_shapes(fields, size, channels)
        params = convert.convert_module(
            model, synthetic_state_dict(shapes), image_size=size, num_channels=channels, what=section
        )
        assert flax_count(params) == official_num_parameters(shapes)


def test_selective_kernel_resnet_layout_is_complete():
    fields = dict(name="resnet", latent_dim=64, depth=50, width_multiplier=1, sk_ratio=0.0625, head_num_layers=3)
    shapes = official_state_shapes(all_fields(fields), 32, 3)
    state_dict = {k: np.broadcast_to(np.float32(0.5), shape) for k, shape in shapes.items()}
    params = convert.convert_module(models.build(fields), state_dict, image_size=32, num_channels=3)
    assert flax_count(params) == official_num_parameters(shapes)
    assert params["stage0_block0"]["sk"]["mix_conv1"]["kernel"].shape == (1, 1, 32, 128)


def test_flattened_head_rows_follow_nhwc_order():
    """torch flattens the head's conv map as (C, H, W); the converted kernel must read an (H, W, C) flatten."""
    fields = dict(
        name="ncsnpp_encoder", latent_dim=3, nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
        num_base_channels=2, num_base_units=5,
    )
    state_dict = synthetic_state_dict(official_state_shapes(all_fields(fields), 4, 3))
    params = convert.convert_module(models.build(fields), state_dict, image_size=4, num_channels=3)
    feature = np.random.default_rng(1).standard_normal((1, 4, 4, 2)).astype(np.float32)  # NHWC conv output
    weight, bias = state_dict["latent_transformations.0.0.weight"], state_dict["latent_transformations.0.0.bias"]
    torch_out = weight @ feature.transpose(0, 3, 1, 2).reshape(-1) + bias
    dense = params["head0"]["Dense_0"]
    np.testing.assert_allclose(feature.reshape(-1) @ dense["kernel"] + dense["bias"], torch_out, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Error reports, wrappers, EMA.


def test_errors_name_every_missing_unexpected_and_misshapen_key():
    config = tiny_decoder_config()
    model = models.build(config.decoder)
    state_dict = synthetic_state_dict(official_state_shapes(all_fields(config.decoder), 8, 3))
    del state_dict["all_modules.1.bias"]  # cond_dense0's bias (index 0 is the Fourier projection)
    state_dict["all_modules.4.extra.weight"] = np.zeros((2, 2))
    state_dict["bogus"] = np.zeros(3)
    state_dict["all_modules.4.running_mean"] = np.zeros(8)
    state_dict["all_modules.3.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_module(model, state_dict, image_size=8, num_channels=3, what="decoder")
    message = str(err.value)
    assert "decoder state dict" in message
    assert "missing Flax params (1): cond_dense0/bias" in message
    for key in ("all_modules.4.extra.weight", "bogus", "all_modules.4.running_mean"):
        assert key in message
    assert "all_modules.3.weight -> conv_in/kernel: got (5, 5, 3, 8), expected (3, 3, 3, 8)" in message


def test_wrapper_prefixes_and_buffers_are_ignored():
    config = tiny_decoder_config()
    model = models.build(config.decoder)
    state_dict = synthetic_state_dict(official_state_shapes(all_fields(config.decoder), 8, 3))
    plain = convert.convert_module(model, state_dict, image_size=8, num_channels=3)
    wrapped = {f"model.module.{k}": v for k, v in state_dict.items()}
    assert "model.module.sigmas" in wrapped
    unwrapped = convert.convert_module(model, wrapped, image_size=8, num_channels=3)
    jax.tree.map(np.testing.assert_array_equal, plain, unwrapped)


def test_ema_shadow_list_follows_parameter_order_and_skips_frozen_params():
    config = tiny_decoder_config()
    state_dict = synthetic_state_dict(official_state_shapes(all_fields(config.decoder), 8, 3))
    state_dict = {f"model.module.{k}": v for k, v in state_dict.items()}
    trainable = [k for k in state_dict if not k.endswith(("sigmas", "all_modules.0.W"))]
    ema = {"decay": 0.999, "num_updates": 7, "shadow_params": [state_dict[k] + 1.0 for k in trainable]}
    params, ema_params = convert.convert_checkpoint({"decoder": state_dict, "decoder_ema": ema}, config)
    ema_tree, tree = dict(ema_params["decoder"]), dict(params["decoder"])
    # The frozen Fourier frequencies are not averaged upstream: the EMA copy is the weights themselves.
    np.testing.assert_array_equal(ema_tree.pop("time_fourier")["W"], tree.pop("time_fourier")["W"])
    jax.tree.map(lambda e, p: np.testing.assert_allclose(e, p + 1.0, rtol=1e-6), ema_tree, tree)
    ema["shadow_params"] = ema["shadow_params"][:-1]
    with pytest.raises(convert.ConversionError, match=r"decoder_ema: the EMA tracks \d+ tensors"):
        convert.convert_checkpoint({"decoder": state_dict, "decoder_ema": ema}, config)


def test_config_and_checkpoint_must_hold_the_same_models():
    config = tiny_decoder_config()
    state_dict = synthetic_state_dict(official_state_shapes(all_fields(config.decoder), 8, 3))
    checkpoint = {"decoder": state_dict, "label_anchor": {"anchor": np.zeros((10, 4), np.float32)}}
    with pytest.raises(convert.ConversionError, match="only the checkpoint has a 'label_anchors' model"):
        convert.convert_checkpoint(checkpoint, config)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_checkpoint({"encoder": {}}, config)
    assert "only the checkpoint has a 'encoder' model" in str(err.value)
    assert "only the config has a 'decoder' model" in str(err.value)


def test_official_model_config_with_unknown_variant_is_rejected():
    official = dict(
        nf=8, num_res_blocks=1, dropout=0.0, resamp_with_conv=True, fir=False, skip_rescale=True, init_scale=0.0,
        ch_mult=[1], attn_resolutions=[], fir_kernel=[1, 3, 3, 1], resblock_type="biggan",
        progressive_input="none", progressive_combine="sum", nonlinearity="swish", normalization="GroupNorm",
    )
    assert convert.official_ncsnpp_fields(official, decoder=False)["ch_mult"] == (1,)
    official["normalization"] = "InstanceNorm++"
    with pytest.raises(ValueError, match="normalization='InstanceNorm\\+\\+'"):
        convert.official_ncsnpp_fields(official, decoder=False)


def test_reading_pt_without_torch_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not really a checkpoint")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[torch\]"'):
        convert.load_checkpoint(str(path))


# ----------------------------------------------------------------------------------------------------------------
# The CLI, end to end: reference npz -> Orbax directory -> restored params reproduce the official outputs.


def _write_reference_config(path: pathlib.Path, ref) -> None:
    cfg = json.loads(str(ref["config_json"]))
    encoder = dict(
        name="ncsnpp_encoder",
        latent_dim=int(ref["latent_dim"]),
        num_base_channels=int(ref["encoder_num_base_channels"]),
        num_base_units=int(ref["encoder_num_base_units"]),
        num_latent_transformation_layers=int(ref["encoder_num_latent_layers"]),
        **convert.official_ncsnpp_fields(cfg["model"], decoder=False),
    )
    key = "encoder_latent_transformation_resolutions"
    if key in ref.files:
        encoder["latent_transformation_resolutions"] = tuple(int(r) for r in ref[key])
    decoder = dict(
        name="ncsnpp_decoder",
        latent_dim=int(ref["latent_dim"]),
        num_classes=int(ref["num_classes"]),
        **convert.official_ncsnpp_fields(cfg["model"], decoder=True),
    )
    path.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        f"    return ml_collections.ConfigDict({dict(data=cfg['data'], encoder=encoder, decoder=decoder)!r})\n"
    )


@pytest.mark.slow  # 20 s cold on 2 cores (fast-tier budget)
def test_cli_converts_npz_into_an_orbax_checkpoint(tmp_path, ncsnpp_small_file):
    ref = np.load(ncsnpp_small_file)
    config_path = tmp_path / "small.py"
    _write_reference_config(config_path, ref)
    # The reference file has no EMA; add an encoder EMA (2x the weights) to exercise the named-EMA input.
    arrays = {k: ref[k] for k in ref.files}
    arrays.update({f"encoder_ema/{k[len('encoder/'):]}": 2 * ref[k] for k in ref.files if k.startswith("encoder/")})
    checkpoint_path = tmp_path / "official.npz"
    np.savez(checkpoint_path, **arrays)
    out = tmp_path / "converted"

    convert.main(["--checkpoint", str(checkpoint_path), "--config", str(config_path), "--out", str(out)])

    manager = ocp.CheckpointManager(out)
    assert manager.all_steps() == [0]
    restored = manager.restore(
        0, args=ocp.args.Composite(params=ocp.args.StandardRestore(), ema_params=ocp.args.StandardRestore())
    )
    manager.close()
    params, ema_params = restored.params, restored.ema_params
    assert set(params) == set(ema_params) == {"encoder", "decoder"}
    jax.tree.map(lambda e, p: np.testing.assert_allclose(e, 2 * p), ema_params["encoder"], params["encoder"])
    jax.tree.map(np.testing.assert_array_equal, ema_params["decoder"], params["decoder"])  # no EMA: raw copy

    config = config_files.load(str(config_path))
    encoder = models.build(config.encoder)
    anchors = encoder.apply({"params": params["encoder"]}, np.transpose(ref["in_x"], (0, 2, 3, 1)))
    np.testing.assert_allclose(anchors, ref["out_encoder"], atol=1e-4 * np.abs(ref["out_encoder"]).max())

    helper_params, _ = convert.load_converted(str(out))
    jax.tree.map(np.testing.assert_array_equal, helper_params, params)
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        convert.main(["--checkpoint", str(checkpoint_path), "--config", str(config_path), "--out", str(out)])
