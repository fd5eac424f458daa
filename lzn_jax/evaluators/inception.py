"""The FID InceptionV3 (TF graph `inception-2015-12-05`) in Flax, and loading its weights.

This is the network every FID number is computed with: torchvision's InceptionV3 layout with the three
changes the TF graph has (pytorch-fid's `FIDInceptionA/C/E`): the 3x3 average pools of the A, C and first E
blocks ignore padded zeros, and the last E block max-pools its pool branch. Its output is the 2048-d
global-average-pooled feature (`pool_3`). It expects images already resized to 299x299 and scaled to [-1, 1];
the FID pipelines in `fid.py` do that.

Parameter names mirror the PyTorch state dict (`Mixed_5b.branch1x1.conv.weight`, ...), so the pytorch-fid
weights file `pt_inception-2015-12-05-*.pth` maps onto the Flax tree by renaming and transposing alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DIM = 2048
INPUT_SIZE = 299
_BN_EPS = 1e-3  # the TF graph's batch-norm epsilon
# State-dict entries the pool_3 feature does not use: the 1008-way classifier and PyTorch's BN step counters.
_UNUSED_KEY_PREFIXES = ("fc.",)
_UNUSED_KEY_SUFFIXES = (".num_batches_tracked",)


def tf_avg_pool(x: jax.Array) -> jax.Array:
    """3x3, stride 1, 'same' average pool that averages over real pixels only, as TF does. [B,H,W,C] -> same."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class ConvBN(nn.Module):
    """Convolution without bias, inference-mode batch norm, ReLU (torchvision's `BasicConv2d`)."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad_h, pad_w = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=True, epsilon=_BN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="bn"
        )(x)
        return nn.relu(x)


class _Block(nn.Module):
    """Base for the mixed blocks: `conv(name, features, kernel, ...)` builds a named `ConvBN`."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def conv(self, name: str, features: int, kernel: tuple[int, int], strides: int = 1, padding=(0, 0)) -> ConvBN:
        return ConvBN(features, kernel, strides, padding, dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class InceptionA(_Block):
    """35x35 block; output channels 224 + `pool_features`."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv("branch1x1", 64, (1, 1))(x)
        b5 = self.conv("branch5x5_1", 48, (1, 1))(x)
        b5 = self.conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(b5)
        b3 = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
        b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
        b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
        bp = self.conv("branch_pool", self.pool_features, (1, 1))(tf_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """35x35 -> 17x17 reduction; output channels 480 + input channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv("branch3x3", 384, (3, 3), strides=2)(x)
        bd = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
        bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
        bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=2)(bd)
        bp = nn.max_pool(x, (3, 3), strides=(2, 2))
        return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(_Block):
    """17x17 block with factorised 7x7 convolutions; output channels 768."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192, (1, 1))(x)
        b7 = self.conv("branch7x7_1", c7, (1, 1))(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7, (1, 1))(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192, (1, 1))(tf_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """17x17 -> 8x8 reduction; output channels 512 + input channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv("branch3x3_1", 192, (1, 1))(x)
        b3 = self.conv("branch3x3_2", 320, (3, 3), strides=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192, (1, 1))(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=2)(b7)
        bp = nn.max_pool(x, (3, 3), strides=(2, 2))
        return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(_Block):
    """8x8 block with split 1x3/3x1 convolutions; output channels 2048.

    `pool="max"` reproduces the TF graph's last block, which max-pools where the paper average-pools.
    """

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv("branch1x1", 320, (1, 1))(x)
        b3 = self.conv("branch3x3_1", 384, (1, 1))(x)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448, (1, 1))(x)
        bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pooled = tf_avg_pool(x)
        elif self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"InceptionE.pool must be 'avg' or 'max', got {self.pool!r}.")
        bp = self.conv("branch_pool", 192, (1, 1))(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID InceptionV3 up to the final pool: images [B,H,W,3] in [-1, 1] -> pool_3 features [B, 2048].

    The FID protocol feeds 299x299 images (`INPUT_SIZE`); the network is fully convolutional, so any
    H, W >= 75 runs (tests use small sizes).
    """

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3 expects images [B, H, W, 3], got shape {x.shape}.")
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV3 needs H, W >= 75 (FID uses 299), got {x.shape[1:3]}.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3", **kw)(x)
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3", **kw)(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3", **kw)(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1", **kw)(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3", **kw)(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)
        x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)
        x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)
        x = InceptionB(name="Mixed_6a", **kw)(x)
        x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
        x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
        x = InceptionD(name="Mixed_7a", **kw)(x)
        x = InceptionE(pool="avg", name="Mixed_7b", **kw)(x)
        x = InceptionE(pool="max", name="Mixed_7c", **kw)(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# ----------------------------------------------------------------------------------------------------------
# Weights: PyTorch state-dict names <-> Flax variables.


def _variable_shapes() -> dict:
    """The Flax variable tree of `InceptionV3` as ShapeDtypeStructs (no compute: shapes are size-independent)."""
    dummy = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.key(0), dummy)


def init_inception_variables(seed: int = 0) -> dict:
    """Random `{"params", "batch_stats"}` for `InceptionV3`, for tests (the real ones come from a file).

    Drawn with numpy from the variable shapes rather than by `InceptionV3().init`, which would trace and
    compile the whole network. Every leaf is random (He-scaled kernels, BN scale/var in [0.5, 1.5], BN
    bias/mean ~ N(0, 0.1)), so a weights round trip exercises all of them and features stay O(1).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf) -> np.ndarray:
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, _variable_shapes())


def _conv_bn_prefixes(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths (module names) of every ConvBN in a params tree: the nodes holding both 'conv' and 'bn'."""
    if "conv" in tree and "bn" in tree:
        return [prefix]
    return [p for name, sub in tree.items() for p in _conv_bn_prefixes(sub, prefix + (name,))]


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def state_dict_from_variables(variables: Mapping) -> dict[str, np.ndarray]:
    """Flax `{"params", "batch_stats"}` -> PyTorch-named numpy state dict (conv weights OIHW)."""
    out = {}
    for path in _conv_bn_prefixes(variables["params"]):
        name = ".".join(path)
        params, stats = _get(variables["params"], path), _get(variables["batch_stats"], path)
        out[f"{name}.conv.weight"] = np.asarray(params["conv"]["kernel"]).transpose(3, 2, 0, 1)
        out[f"{name}.bn.weight"] = np.asarray(params["bn"]["scale"])
        out[f"{name}.bn.bias"] = np.asarray(params["bn"]["bias"])
        out[f"{name}.bn.running_mean"] = np.asarray(stats["bn"]["mean"])
        out[f"{name}.bn.running_var"] = np.asarray(stats["bn"]["var"])
    return out


def variables_from_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """PyTorch-named state dict (numpy arrays) -> Flax `{"params", "batch_stats"}` for `InceptionV3`.

    Every ConvBN of the network must be present with the expected shapes; keys the pool_3 feature does not
    use (`fc.*`, `*.num_batches_tracked`) are ignored; any other key is an error, since it means the file is
    not the FID Inception.
    """
    shapes = _variable_shapes()
    used = set()

    def take(key: str, expected_shape: tuple[int, ...], transpose: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in state_dict:
            raise KeyError(f"Inception weights lack {key!r}: is this the pytorch-fid pt_inception-2015-12-05 file?")
        value = np.asarray(state_dict[key], dtype=np.float32)
        if transpose is not None:
            value = value.transpose(transpose)
        if value.shape != tuple(expected_shape):
            raise ValueError(f"Inception weight {key!r} has shape {value.shape}, expected {tuple(expected_shape)}.")
        used.add(key)
        return value

    params: dict = {}
    stats: dict = {}
    for path in _conv_bn_prefixes(shapes["params"]):
        name = ".".join(path)
        p_shape, s_shape = _get(shapes["params"], path), _get(shapes["batch_stats"], path)
        p_node, s_node = params, stats
        for part in path:
            p_node, s_node = p_node.setdefault(part, {}), s_node.setdefault(part, {})
        p_node["conv"] = {"kernel": take(f"{name}.conv.weight", p_shape["conv"]["kernel"].shape, (2, 3, 1, 0))}
        p_node["bn"] = {
            "scale": take(f"{name}.bn.weight", p_shape["bn"]["scale"].shape),
            "bias": take(f"{name}.bn.bias", p_shape["bn"]["bias"].shape),
        }
        s_node["bn"] = {
            "mean": take(f"{name}.bn.running_mean", s_shape["bn"]["mean"].shape),
            "var": take(f"{name}.bn.running_var", s_shape["bn"]["var"].shape),
        }
    unknown = sorted(
        k
        for k in state_dict
        if k not in used and not k.startswith(_UNUSED_KEY_PREFIXES) and not k.endswith(_UNUSED_KEY_SUFFIXES)
    )
    if unknown:
        raise ValueError(f"Inception weights hold {len(unknown)} unexpected keys, e.g. {unknown[:3]}.")
    return {"params": params, "batch_stats": stats}


def _read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # Imported lazily: only the .pth format needs it.
    except ImportError as err:
        raise ImportError(
            f"Reading the PyTorch weights file {path!r} needs torch (pip install torch). Without torch, "
            "convert it once elsewhere to an .npz of the same keys, e.g. "
            "np.savez(out, **{k: v.numpy() for k, v in torch.load(path).items()}), and point "
            "fid.inception_weights at the .npz."
        ) from err
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def load_inception_params(path: str | os.PathLike) -> dict:
    """The FID Inception variables `{"params", "batch_stats"}` from a local weights file.

    Args:
      path: pytorch-fid's `pt_inception-2015-12-05-*.pth` state dict (read with torch), or an `.npz` holding the
        same keys (no torch needed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights file {path!r} does not exist. Set fid.inception_weights to a local copy of "
            "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or an .npz of its state dict)."
        )
    if path.endswith(".npz"):
        with np.load(path) as data:
            state_dict = {k: data[k] for k in data.files}
    elif path.endswith((".pth", ".pt")):
        state_dict = _read_torch_state_dict(path)
    else:
        raise ValueError(f"Inception weights must be a .pth/.pt (PyTorch) or .npz file, got {path!r}.")
    return variables_from_state_dict(state_dict)
