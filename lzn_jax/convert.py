"""Official PyTorch checkpoints -> Flax params, and `python -m lzn_jax.convert`.

    python -m lzn_jax.convert --checkpoint X.pt --config configs/joint_cifar10.py --out DIR

writes an Orbax checkpoint (`CheckpointManager(DIR)`, step 0) with the items `params` and `ema_params`, each
`{"encoder": ..., "decoder": ..., "label_anchors": ...}` (only the modules the config has); `load_converted(DIR)`
restores them. Inputs: an official trainer checkpoint (`.pt`; needs the `torch` extra) or an `.npz` whose keys are
`<entry>/<torch name>` with entry in `encoder`, `decoder`, `label_anchor` or their `*_ema` versions.

The official models keep their layers in numbered containers (`all_modules.7`, `net.2.blocks.0.net.3`, …); a
`Layout` says which Flax submodule each of those containers became. Leaves are then converted by name and rank:

| torch leaf | rank | Flax leaf | transform |
|---|---|---|---|
| `weight` | 4 (conv, OIHW) | `kernel` | -> HWIO |
| `weight` | 2 (linear, [out, in]) | `kernel` | transpose (and NCHW->NHWC row order for flattened conv maps) |
| `weight` | 1 (GroupNorm) | `scale` | |
| `bias`, `b` | 1 | `bias` | |
| `W` | 2 (NIN, [in, out]) | `kernel` | |
| `W` | 1 (Gaussian Fourier frequencies) | `W` | |
| `anchor` | 2 (label anchors) | `anchors` | |

The core works on plain dicts of numpy arrays, so it needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lzn_jax import config_files, models
from lzn_jax.models import label_anchors, ncsnpp, resnet

FlaxPath = tuple[str, ...]

# Containers the official trainers wrap every model in (CustomDistributedDataParallel -> DDP -> model).
WRAPPER_PREFIXES = ("model.module.", "module.")


class ConversionError(ValueError):
    """A state dict does not match the Flax model: lists every missing, unexpected and wrongly shaped key."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one official torch module's state dict maps onto a Flax module's params.

    modules: torch container prefix (e.g. `all_modules.3`) -> Flax submodule path (e.g. `("down0_res0",)`); the
      rest of a torch key (`GroupNorm_0.weight`) is appended as-is, its last part converted by the leaf table.
    buffers: torch state-dict entries that are buffers, not parameters (no Flax counterpart; ignored).
    frozen: torch parameters with `requires_grad=False`; the official EMA does not track them.
    chw_flattened: linear weights whose input is an NCHW feature map flattened in C, H, W order -> its channels.
    """

    modules: Mapping[str, FlaxPath]
    buffers: frozenset[str] = frozenset()
    frozen: frozenset[str] = frozenset()
    chw_flattened: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def flax_path(self, torch_key: str) -> FlaxPath | None:
        """The Flax param path of `torch_key`, or None when no container of the layout owns it."""
        parts = torch_key.split(".")
        for cut in range(len(parts) - 1, -1, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self.modules:
                inner = parts[cut:]
                return self.modules[prefix] + tuple(inner[:-1]) + (inner[-1],)
        return None


# --------------------------------------------------------------------------------------------------------------
# Layouts of the official modules (the order of `all_modules` is the order of the official constructors).


def _has_attention(model: ncsnpp.NCSNPPTrunk, resolution: int) -> bool:
    return resolution in tuple(model.attn_resolutions)


def _trunk_names(model: ncsnpp.NCSNPPTrunk, image_size: int) -> tuple[list[str], list[int]]:
    """Flax names of the contracting path in official `all_modules` order, and the resolution of every skip."""
    names, skip_res = ["conv_in"], [image_size]
    num_levels = len(model.ch_mult)
    for level in range(num_levels):
        res = image_size // 2**level
        for i in range(model.num_res_blocks):
            names.append(f"down{level}_res{i}")
            if _has_attention(model, res):
                names.append(f"down{level}_attn{i}")
            skip_res.append(res)
        if level != num_levels - 1:
            names.append(f"down{level}_resample")
            if model.progressive_input == "input_skip":
                names.append(f"down{level}_combine")
            elif model.progressive_input == "residual":
                names.append(f"down{level}_pyramid")
            skip_res.append(res // 2)
    names += ["mid_res0", "mid_attn", "mid_res1"]
    return names, skip_res


def ncsnpp_encoder_layout(encoder: ncsnpp.NCSNPPEncoder, image_size: int) -> Layout:
    names, skip_res = _trunk_names(encoder, image_size)
    modules = {f"all_modules.{i}": (name,) for i, name in enumerate(names)}
    chw = {}
    allowed = encoder.latent_transformation_resolutions
    for i, res in enumerate(skip_res + [skip_res[-1]]):  # the middle block's output has a head too
        if allowed is not None and res not in allowed:
            continue
        modules[f"spatial_transformations.{i}.0"] = (f"head{i}", "Conv_0")
        for k in range(encoder.num_latent_transformation_layers):
            modules[f"latent_transformations.{i}.{2 * k}"] = (f"head{i}", f"Dense_{k}")
        chw[f"latent_transformations.{i}.0.weight"] = encoder.num_base_channels
    return Layout(modules=modules, chw_flattened=chw)


def ncsnpp_decoder_layout(decoder: ncsnpp.NCSNPPDecoder, image_size: int) -> Layout:
    names, frozen = [], set()
    if decoder.embedding_type == "fourier":
        names.append("time_fourier")
        frozen.add("all_modules.0.W")
    names += ["cond_dense0", "cond_dense1"]
    names += _trunk_names(decoder, image_size)[0]
    num_levels = len(decoder.ch_mult)
    for level in reversed(range(num_levels)):
        names += [f"up{level}_res{i}" for i in range(decoder.num_res_blocks + 1)]
        if _has_attention(decoder, image_size // 2**level):
            names.append(f"up{level}_attn")
        if decoder.progressive == "output_skip" or (decoder.progressive == "residual" and level == num_levels - 1):
            names += [f"up{level}_pyramid_norm", f"up{level}_pyramid_conv"]
        elif decoder.progressive == "residual":
            names.append(f"up{level}_pyramid_up")
        if level != 0:
            names.append(f"up{level}_resample")
    if decoder.progressive != "output_skip":
        names += ["out_norm", "out_conv"]
    modules = {f"all_modules.{i}": (name,) for i, name in enumerate(names)}
    # `sigmas` is the noise-level table of the VE SDE, registered as a buffer even where nothing reads it.
    return Layout(modules=modules, buffers=frozenset({"sigmas"}), frozen=frozenset(frozen))


def _bottleneck_layout(torch_block: str, flax_block: str, first: bool, sk: bool) -> dict[str, FlaxPath]:
    """One `BottleneckBlock`: projection (first block of a stage) and its `net` Sequential."""
    modules = {}
    if first:  # with SK the shortcut is Sequential(ZeroPad2d, AvgPool2d, conv)
        modules[f"{torch_block}.projection.shortcut" + (".2" if sk else "")] = (flax_block, "projection_conv")
        modules[f"{torch_block}.projection.bn.0"] = (flax_block, "projection_norm")
    net = f"{torch_block}.net"
    modules[f"{net}.0"] = (flax_block, "conv0")
    modules[f"{net}.1.0"] = (flax_block, "norm0")
    if sk:
        sk_module = f"{net}.2"
        modules[f"{sk_module}.main_conv.0"] = (flax_block, "sk", "main_conv")
        modules[f"{sk_module}.main_conv.1.0"] = (flax_block, "sk", "main_norm")
        modules[f"{sk_module}.mixing_conv.0"] = (flax_block, "sk", "mix_conv0")
        modules[f"{sk_module}.mixing_conv.1.0"] = (flax_block, "sk", "mix_norm")
        modules[f"{sk_module}.mixing_conv.2"] = (flax_block, "sk", "mix_conv1")
        last_conv = 3
    else:
        modules[f"{net}.2"] = (flax_block, "conv1")
        modules[f"{net}.3.0"] = (flax_block, "norm1")
        last_conv = 4
    modules[f"{net}.{last_conv}"] = (flax_block, "conv2")
    modules[f"{net}.{last_conv + 1}.0"] = (flax_block, "norm2")
    return modules


def resnet_layout(encoder: resnet.ResNetEncoder) -> Layout:
    """Official `ResNet`: `net.0` stem, `net.{1..4}.blocks.{b}` bottlenecks, `head.layers` (Linear, GN[, ReLU])."""
    sk = encoder.sk_ratio > 0
    if sk:
        stem = ["stem_conv0", "stem_norm0", "stem_conv1", "stem_norm1", "stem_conv2", "stem_norm"]
    else:
        stem = ["stem_conv", "stem_norm"]
    # Sequential indices; GroupNormRelu is itself a Sequential whose GroupNorm sits at `.0`.
    modules = {f"net.0.{i}" + (".0" if "norm" in name else ""): (name,) for i, name in enumerate(stem)}
    for stage, num_blocks in enumerate(encoder.blocks_per_stage):
        for b in range(num_blocks):
            modules.update(_bottleneck_layout(f"net.{stage + 1}.blocks.{b}", f"stage{stage}_block{b}", b == 0, sk))
    for i in range(encoder.head_num_layers):  # every layer but the last is followed by a ReLU entry
        modules[f"head.layers.{3 * i}"] = (f"head_dense{i}",)
        modules[f"head.layers.{3 * i + 1}"] = (f"head_norm{i}",)
    return Layout(modules=modules)


LABEL_ANCHORS_LAYOUT = Layout(modules={"": ()})  # a single top-level parameter, `anchor`


def layout_for(model: Any, image_size: int) -> Layout:
    """The layout of the official module that `model` (a built lzn_jax module) reproduces."""
    if isinstance(model, ncsnpp.NCSNPPEncoder):
        return ncsnpp_encoder_layout(model, image_size)
    if isinstance(model, ncsnpp.NCSNPPDecoder):
        return ncsnpp_decoder_layout(model, image_size)
    if isinstance(model, resnet.ResNetEncoder):
        return resnet_layout(model)
    if isinstance(model, label_anchors.LabelAnchors):
        return LABEL_ANCHORS_LAYOUT
    raise TypeError(f"No official PyTorch layout is known for {type(model).__name__}.")


# --------------------------------------------------------------------------------------------------------------
# Leaf conversion.


def strip_wrappers(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the `model.module.` / `module.` prefixes that the official (distributed) wrappers add."""
    out = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def _chw_rows_to_hwc(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Reorders the input rows of a `[C·H·W, out]` kernel to the `[H·W·C, out]` order of an NHWC flatten.

    A kernel that is no `channels`-deep square map is returned as is; the shape check then reports it.
    """
    rows, out = kernel.shape
    side = int(round((rows // channels) ** 0.5))
    if channels * side * side != rows:
        return kernel
    return kernel.reshape(channels, side, side, out).transpose(1, 2, 0, 3).reshape(rows, out)


def _convert_leaf(key: str, value: np.ndarray, chw_channels: int | None) -> tuple[str, np.ndarray] | None:
    """(Flax leaf name, converted array) of the torch leaf `key`, or None for a leaf no official model has."""
    name, rank = key.rsplit(".", 1)[-1], value.ndim
    if name == "weight" and rank == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if name == "weight" and rank == 2:
        kernel = value.T
        return "kernel", kernel if chw_channels is None else _chw_rows_to_hwc(kernel, chw_channels)
    if name == "weight" and rank == 1:
        return "scale", value
    if name in ("bias", "b") and rank == 1:
        return "bias", value
    if name == "W" and rank in (1, 2):
        return ("kernel" if rank == 2 else "W"), value
    if name == "anchor" and rank == 2:
        return "anchors", value
    return None


def _flatten(tree: Mapping[str, Any], prefix: FlaxPath = ()) -> dict[FlaxPath, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def _unflatten(flat: Mapping[FlaxPath, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _join(path: Iterable[str]) -> str:
    return "/".join(path)


def convert_state_dict(
    layout: Layout, state_dict: Mapping[str, np.ndarray], expected: Mapping[str, Any], *, what: str = "model"
) -> dict[str, Any]:
    """Converts an official state dict to a Flax param tree shaped like `expected` (e.g. from `jax.eval_shape`).

    Raises `ConversionError` naming every torch key that maps nowhere, every Flax param that received nothing,
    and every shape mismatch. Values are cast to the dtype of `expected`'s leaves.
    """
    state_dict = strip_wrappers(state_dict)
    want = _flatten(expected)
    got: dict[FlaxPath, np.ndarray] = {}
    seen: set[FlaxPath] = set()
    unexpected, mismatched = [], []
    for key, value in state_dict.items():
        if key in layout.buffers:
            continue
        path = layout.flax_path(key)
        if path is None:
            unexpected.append(key)
            continue
        converted = _convert_leaf(key, np.asarray(value), layout.chw_flattened.get(key))
        if converted is None:
            unexpected.append(f"{key} (a {np.ndim(value)}-d {key.rsplit('.', 1)[-1]!r}: not a known parameter)")
            continue
        leaf, array = converted
        path = path[:-1] + (leaf,)
        if path not in want:
            unexpected.append(f"{key} (-> {_join(path)}, which the Flax model does not have)")
            continue
        seen.add(path)
        if tuple(array.shape) != tuple(want[path].shape):
            mismatched.append(f"{key} -> {_join(path)}: got {tuple(array.shape)}, expected {tuple(want[path].shape)}")
        else:
            got[path] = array.astype(want[path].dtype)
    missing = [_join(p) for p in want if p not in seen]
    if unexpected or missing or mismatched:
        lines = [f"The {what} state dict does not match the Flax model:"]
        for title, items in (
            ("unexpected torch keys", unexpected),
            ("missing Flax params", missing),
            ("shape mismatches", mismatched),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ConversionError("\n".join(lines))
    return _unflatten({p: got[p] for p in want})


_FLAX_LEAVES = {"weight": ("kernel", "scale"), "bias": ("bias",), "b": ("bias",), "W": ("kernel", "W"), "anchor": ("anchors",)}


def to_state_dict(layout: Layout, params: Mapping[str, Any], names: Iterable[str]) -> dict[str, np.ndarray]:
    """Flax params -> the official tensors `names` (torch names and layouts): the inverse of `convert_state_dict`.

    Lets Flax params be compared with (or saved as) official state-dict entries; buffers have no Flax source.
    """
    flat = _flatten(params)
    out = {}
    for key in names:
        path = layout.flax_path(key)
        torch_leaf = key.rsplit(".", 1)[-1]
        found = [path[:-1] + (leaf,) for leaf in _FLAX_LEAVES.get(torch_leaf, ()) if path is not None]
        found = [p for p in found if p in flat]
        if not found:
            raise ConversionError(f"No Flax param corresponds to the official tensor {key!r}.")
        value = np.asarray(flat[found[0]])
        if found[0][-1] == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif found[0][-1] == "kernel" and torch_leaf == "weight":
            channels = layout.chw_flattened.get(key)
            value = (value if channels is None else _hwc_rows_to_chw(value, channels)).T
        out[key] = value
    return out


def _hwc_rows_to_chw(kernel: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of `_chw_rows_to_hwc`."""
    rows, out = kernel.shape
    side = int(round((rows // channels) ** 0.5))
    return kernel.reshape(side, side, channels, out).transpose(2, 0, 1, 3).reshape(rows, out)


def param_shapes(model: Any, image_size: int, num_channels: int) -> dict[str, Any]:
    """The `params` tree of `model` as `jax.ShapeDtypeStruct`s (nothing is allocated)."""
    args = model.example_inputs(image_size, num_channels)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]


def convert_module(
    model: Any, state_dict: Mapping[str, np.ndarray], *, image_size: int, num_channels: int, what: str = "model"
) -> dict[str, Any]:
    """Official state dict of the module that `model` reproduces -> `model`'s Flax params (numpy arrays)."""
    layout = layout_for(model, image_size)
    return convert_state_dict(layout, state_dict, param_shapes(model, image_size, num_channels), what=what)


# Official `config.model` keys with one admissible value: they describe the only variant that exists.
_FIXED_OFFICIAL_KEYS = {"normalization": "groupnorm", "attention_type": "ddpm", "conv_size": 3}
_TRUNK_KEYS = ("nf", "num_res_blocks", "dropout", "resamp_with_conv", "fir", "skip_rescale", "init_scale")
_TUPLE_KEYS = ("ch_mult", "attn_resolutions", "fir_kernel")
_LOWERCASE_KEYS = ("resblock_type", "progressive_input", "progressive_combine", "nonlinearity")


def official_ncsnpp_fields(model_config: Mapping[str, Any], *, decoder: bool) -> dict[str, Any]:
    """Constructor fields of `NCSNPPEncoder`/`NCSNPPDecoder` from an official `config.model` section.

    Keys that only matter to other parts of the official code (SDE noise levels, EMA rate, …) are ignored.
    """
    for key, allowed in _FIXED_OFFICIAL_KEYS.items():
        value = model_config.get(key, allowed)
        if (value.lower() if isinstance(value, str) else value) != allowed:
            raise ValueError(f"Official model config has {key}={value!r}; only {allowed!r} exists upstream.")
    fields = {key: model_config[key] for key in _TRUNK_KEYS}
    fields.update({key: tuple(model_config[key]) for key in _TUPLE_KEYS})
    fields.update({key: model_config[key].lower() for key in _LOWERCASE_KEYS})
    if decoder:
        fields.update(
            time_conditional=bool(model_config["conditional"]),
            embedding_type=model_config["embedding_type"].lower(),
            fourier_scale=float(model_config["fourier_scale"]),
            progressive=model_config["progressive"].lower(),
            scale_by_sigma=bool(model_config["scale_by_sigma"]),
        )
    return fields


def official_resnet_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """`ResNetEncoder` fields from the official `lzn.model.resnet.ResNet` constructor arguments (`encoder.params`).

    The official `layers` become `stage_blocks` and its 64·`width_multiplier` base width (0.5 allowed) becomes
    `base_width`; its gradient-checkpoint segments become `remat` (memory only, the same numbers).
    """
    base_width = 64 * params["width_multiplier"]
    if base_width != int(base_width):
        raise ValueError(f"Official width_multiplier={params['width_multiplier']} gives a fractional base width.")
    return dict(
        depth=50,  # any bottleneck depth: the official ResNet has only bottleneck blocks; stage_blocks sets counts
        stage_blocks=tuple(int(n) for n in params["layers"]),
        base_width=int(base_width),
        width_multiplier=1,
        sk_ratio=float(params["sk_ratio"]),
        latent_dim=int(params["head_out_dim"]),
        head_num_layers=int(params["head_num_layers"]),
        remat=int(params.get("num_gradient_checkpoint_segments", 0)) > 0,
    )


# --------------------------------------------------------------------------------------------------------------
# Whole checkpoints: models, their EMAs, files.

# Config section of each lzn_jax module -> the entry the official trainers save its state dict under.
CHECKPOINT_ENTRIES = {"encoder": "encoder", "decoder": "decoder", "label_anchors": "label_anchor"}
EMA_SUFFIX = "_ema"


def named_ema(layout: Layout, state_dict: Mapping[str, np.ndarray], ema: Mapping[str, Any], *, what: str) -> dict:
    """The EMA of a module as a state dict with the module's own key names.

    The official `ExponentialMovingAverage.state_dict()` holds `shadow_params`: one tensor per parameter with
    `requires_grad`, in `module.parameters()` order, i.e. the state dict's order without buffers and frozen
    parameters. Frozen parameters (never averaged) are taken from `state_dict`. An EMA that is already named
    (the `.npz` input format) passes through, completed the same way.
    """
    state_dict = strip_wrappers(state_dict)
    if "shadow_params" in ema:
        names = [k for k in state_dict if k not in layout.buffers and k not in layout.frozen]
        shadows = list(ema["shadow_params"])
        if len(shadows) != len(names):
            raise ConversionError(
                f"{what}: the EMA tracks {len(shadows)} tensors but the state dict has {len(names)} trainable "
                "parameters; the checkpoint and config describe different models."
            )
        named = dict(zip(names, shadows))
    else:
        named = strip_wrappers(ema)
    for key in layout.frozen:
        if key in state_dict:
            named.setdefault(key, state_dict[key])
    return named


def model_sections(config: Any) -> dict[str, Any]:
    """{module: complete model section} of a config: a full lzn_jax config (with a `task`) through its task
    composition (`lzn_jax.tasks.model_configs`), a config that only lists model sections as they are."""
    if "task" in config:
        from lzn_jax import tasks  # deferred: the converter's core works without the training stack

        return dict(tasks.model_configs(config))
    return {s: config[s] for s in CHECKPOINT_ENTRIES if s in config and config[s].get("name")}


def convert_checkpoint(checkpoint: Mapping[str, Any], config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Official checkpoint (`{"encoder": state dict, "encoder_ema": ema, ...}`) -> (params, ema_params).

    Converts every module the config has a section for (`encoder`, `decoder`, `label_anchors`); a module whose
    EMA is absent gets its raw params as EMA (logged). Raises `ConversionError` on any mismatch.
    """
    size, channels = config.data.image_size, config.data.num_channels
    sections = model_sections(config)
    mismatched = [
        f"only the {'config' if section in sections else 'checkpoint'} has a {section!r} model (entry {entry!r})"
        for section, entry in CHECKPOINT_ENTRIES.items()
        if (section in sections) != (entry in checkpoint)
    ]
    if mismatched:
        raise ConversionError(
            f"Config and checkpoint hold different models: {'; '.join(mismatched)}. Checkpoint entries: "
            f"{sorted(checkpoint)}. Use the config of the run that wrote the checkpoint."
        )
    params, ema_params = {}, {}
    for section, entry in CHECKPOINT_ENTRIES.items():
        if section not in sections:
            continue
        model = models.build(sections[section])
        layout = layout_for(model, size)
        shapes = param_shapes(model, size, channels)
        state_dict = strip_wrappers(checkpoint[entry])
        params[section] = convert_state_dict(layout, state_dict, shapes, what=entry)
        ema = checkpoint.get(entry + EMA_SUFFIX)
        if ema is None:
            logging.warning("Checkpoint has no %r: using the raw %s params as EMA params.", entry + EMA_SUFFIX, entry)
            ema_params[section] = params[section]
        else:
            named = named_ema(layout, state_dict, ema, what=entry + EMA_SUFFIX)
            ema_params[section] = convert_state_dict(layout, named, shapes, what=entry + EMA_SUFFIX)
    return params, ema_params


def _load_pt(path: str) -> dict[str, Any]:
    try:
        import torch  # optional: only `.pt` inputs need it
    except ImportError as err:
        raise ImportError(
            f'Reading the PyTorch checkpoint {path!r} needs torch: pip install -e ".[torch]" '
            "(or pass an .npz with <entry>/<torch name> keys instead)."
        ) from err

    def to_numpy(tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()

    state = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint = {}
    for entry in CHECKPOINT_ENTRIES.values():
        if entry in state:
            checkpoint[entry] = {k: to_numpy(v) for k, v in state[entry].items()}
        if entry + EMA_SUFFIX in state:
            shadows = state[entry + EMA_SUFFIX]["shadow_params"]
            checkpoint[entry + EMA_SUFFIX] = {"shadow_params": [to_numpy(t) for t in shadows]}
    return checkpoint


def _load_npz(path: str) -> dict[str, Any]:
    entries = set(CHECKPOINT_ENTRIES.values())
    entries |= {e + EMA_SUFFIX for e in entries}
    checkpoint: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            entry, _, name = key.partition("/")
            if name and entry in entries:
                checkpoint.setdefault(entry, {})[name] = data[key]
    return checkpoint


def load_checkpoint(path: str) -> dict[str, Any]:
    """Reads an official `.pt` checkpoint (needs torch) or an `.npz` of `<entry>/<torch name>` arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path!r} does not exist.")
    checkpoint = _load_npz(path) if path.endswith(".npz") else _load_pt(path)
    if not checkpoint:
        raise ConversionError(f"{path!r} holds none of the entries {sorted(CHECKPOINT_ENTRIES.values())}.")
    return checkpoint


def save_converted(directory: str, params: Mapping[str, Any], ema_params: Mapping[str, Any]) -> None:
    """Writes `params` and `ema_params` as step 0 of an Orbax `CheckpointManager(directory)`."""
    manager = ocp.CheckpointManager(os.path.abspath(directory))
    try:
        if manager.latest_step() is not None:
            raise FileExistsError(f"--out {directory!r} already holds a checkpoint; choose a new directory.")
        manager.save(
            0,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params), ema_params=ocp.args.StandardSave(ema_params)
            ),
        )
        manager.wait_until_finished()
    finally:
        manager.close()


def load_converted(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores `(params, ema_params)` from the latest step of a `save_converted` directory."""
    manager = ocp.CheckpointManager(os.path.abspath(directory))
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory!r} holds no Orbax checkpoint.")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardRestore(), ema_params=ocp.args.StandardRestore()),
        )
    finally:
        manager.close()
    return restored.params, restored.ema_params


def _count(tree: Mapping[str, Any]) -> int:
    return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(tree))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lzn_jax.convert", description="Convert an official LZN PyTorch checkpoint to Orbax."
    )
    parser.add_argument("--checkpoint", required=True, help="official .pt checkpoint, or .npz of <entry>/<name>")
    parser.add_argument("--config", required=True, help="lzn_jax config file (PATH[:arg]) describing the same models")
    parser.add_argument("--out", required=True, help="new directory for the Orbax checkpoint (step 0)")
    args = parser.parse_args(argv)
    config = config_files.load(args.config)
    params, ema_params = convert_checkpoint(load_checkpoint(args.checkpoint), config)
    save_converted(args.out, params, ema_params)
    for section in params:
        print(f"{section}: {_count(params[section]):,} parameters (+ EMA)")
    print(f"wrote {os.path.abspath(args.out)} (step 0: params, ema_params)")


def run() -> None:
    """`main` with a one-line error (exit 2) for bad input instead of a traceback."""
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, FileExistsError) as error:  # ConversionError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
