"""Official PyTorch state dicts -> Flax params.

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

The core works on plain dicts of numpy arrays, so it needs no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lzn_jax.models import ncsnpp

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
    chw_flattened: linear weights whose input is an NCHW feature map flattened in C, H, W order.
    """

    modules: Mapping[str, FlaxPath]
    buffers: frozenset[str] = frozenset()
    frozen: frozenset[str] = frozenset()
    chw_flattened: frozenset[str] = frozenset()

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


def _has_attention(model: ncsnpp._NCSNPPTrunk, resolution: int) -> bool:
    return resolution in tuple(model.attn_resolutions)


def _trunk_names(model: ncsnpp._NCSNPPTrunk, image_size: int) -> tuple[list[str], list[int]]:
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
    chw = set()
    allowed = encoder.latent_transformation_resolutions
    for i, res in enumerate(skip_res + [skip_res[-1]]):  # the middle block's output has a head too
        if allowed is not None and res not in allowed:
            continue
        modules[f"spatial_transformations.{i}.0"] = (f"head{i}", "Conv_0")
        for k in range(encoder.num_latent_transformation_layers):
            modules[f"latent_transformations.{i}.{2 * k}"] = (f"head{i}", f"Dense_{k}")
        chw.add(f"latent_transformations.{i}.0.weight")
    return Layout(modules=modules, chw_flattened=frozenset(chw))


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


def layout_for(model: Any, image_size: int) -> Layout:
    """The layout of the official module that `model` (a built lzn_jax module) reproduces."""
    if isinstance(model, ncsnpp.NCSNPPEncoder):
        return ncsnpp_encoder_layout(model, image_size)
    if isinstance(model, ncsnpp.NCSNPPDecoder):
        return ncsnpp_decoder_layout(model, image_size)
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
    """Reorders the input rows of a `[C·H·W, out]` kernel to the `[H·W·C, out]` order of an NHWC flatten."""
    rows, out = kernel.shape
    side = int(round((rows // channels) ** 0.5))
    if channels * side * side != rows:
        raise ConversionError(f"Cannot split {rows} flattened inputs into {channels} channels of a square map.")
    return kernel.reshape(channels, side, side, out).transpose(1, 2, 0, 3).reshape(rows, out)


def _convert_leaf(key: str, value: np.ndarray, chw_channels: int | None) -> tuple[str, np.ndarray]:
    """(Flax leaf name, converted array) of the torch leaf `key` (last part of a state-dict name)."""
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
    raise ConversionError(f"Don't know how to convert {key!r} (rank {rank}).")


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


def _chw_channels(layout: Layout, key: str, state_dict: Mapping[str, np.ndarray]) -> int | None:
    """Channels of the conv map a CHW-flattened linear reads: the out-channels of the sibling spatial conv."""
    if key not in layout.chw_flattened:
        return None
    index = key.split(".")[1]
    return state_dict[f"spatial_transformations.{index}.0.weight"].shape[0]


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
        leaf, array = _convert_leaf(key, np.asarray(value), _chw_channels(layout, key, state_dict))
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


def example_inputs(model: Any, image_size: int, num_channels: int) -> tuple:
    """Positional `init` arguments of batch size 1 for `model` (enough to trace its parameter shapes)."""
    images = jnp.zeros((1, image_size, image_size, num_channels), jnp.float32)
    if isinstance(model, ncsnpp.NCSNPPDecoder):
        latent = jnp.zeros((1, model.latent_dim)) if model.latent_dim else None
        label = jnp.zeros((1, model.num_classes)) if model.num_classes else None
        return latent, label, jnp.full((1,), 0.5), images
    if isinstance(model, ncsnpp.NCSNPPEncoder):
        return (images,)
    raise TypeError(f"No example inputs are known for {type(model).__name__}.")


def param_shapes(model: Any, image_size: int, num_channels: int) -> dict[str, Any]:
    """The `params` tree of `model` as `jax.ShapeDtypeStruct`s (nothing is allocated)."""
    args = example_inputs(model, image_size, num_channels)
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
