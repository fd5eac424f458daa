"""SimCLRv2-style ResNet encoder: official parameter count, head/feature shapes, initialisation, remat."""

import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax import models, tasks
from lzn_jax.models import resnet

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def param_shapes(model, x):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_repr_imagenet_config_has_official_parameter_count():
    config = load_config("repr_imagenet")
    encoder = models.build(tasks.model_configs(config)["encoder"])
    assert isinstance(encoder, resnet.ResNetEncoder)
    size = config.data.image_size
    assert count(param_shapes(encoder, jnp.zeros((1, size, size, config.data.num_channels)))) == 28_231_232


@pytest.mark.slow  # 8 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize(
    "depth,width,sk_ratio,expected_millions",
    # Backbone sizes published with SimCLRv2 (ResNet-50 = torchvision's 23.5M without fc; +SK: 35M, 101+SK: 65M).
    [(50, 1, 0.0, 23.508032), (50, 1, 0.0625, 35.2), (101, 1, 0.0625, 64.7), (200, 1, 0.0, 62.6)],
)
def test_backbone_sizes_and_feature_width(depth, width, sk_ratio, expected_millions):
    encoder = resnet.ResNetEncoder(depth=depth, width_multiplier=width, sk_ratio=sk_ratio)
    x = jnp.zeros((2, 64, 64, 3))
    shapes = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), x, apply_head=False))
    feature, params = shapes[0], shapes[1]["params"]
    assert feature.shape == (2, 2048 * width)
    assert not any(k.startswith("head") for k in params)
    np.testing.assert_allclose(count(params) / 1e6, expected_millions, rtol=2e-3)


def test_head_shapes_and_width_multiplier():
    encoder = resnet.ResNetEncoder(latent_dim=64, width_multiplier=2, head_num_layers=3)
    x = jnp.zeros((2, 32, 32, 3))
    out, variables = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), x))
    assert out.shape == (2, 64)
    head = variables["params"]
    assert [head[f"head_dense{i}"]["kernel"].shape for i in range(3)] == [(4096, 4096), (4096, 4096), (4096, 64)]
    assert "bias" not in head["head_dense0"]


@pytest.mark.slow  # 18 s cold on 2 cores (fast-tier budget)
def test_fresh_blocks_start_as_their_shortcut():
    encoder = resnet.ResNetEncoder(latent_dim=64, head_num_layers=2)
    x = jnp.zeros((1, 32, 32, 3))
    params = jax.jit(encoder.init)(jax.random.key(0, impl="unsafe_rbg"), x)["params"]
    blocks = [v for k, v in params.items() if k.startswith("stage")]
    assert len(blocks) == 16
    assert all(float(jnp.abs(b["norm2"]["scale"]).max()) == 0.0 for b in blocks)
    assert float(jnp.abs(params["head_norm1"]["bias"]).max()) == 0.0
    np.testing.assert_array_equal(params["head_norm0"]["scale"], 1.0)
    fan_in = 7 * 7 * 3  # torch default: U(±1/sqrt(fan_in))
    assert float(jnp.abs(params["stem_conv"]["kernel"]).max()) <= 1 / np.sqrt(fan_in)


class _StemReached(Exception):
    pass


def test_input_is_mapped_from_minus_one_one_to_unit_interval():
    seen = {}

    def stop_at_stem(next_fun, args, kwargs, context):
        if context.module.name == "stem_conv":
            seen["x"] = args[0]
            raise _StemReached  # nothing after the first conv matters here
        return next_fun(*args, **kwargs)

    encoder = resnet.ResNetEncoder(latent_dim=64, head_num_layers=2)
    x = jnp.linspace(-1.0, 1.0, 2 * 32 * 32 * 3).reshape(2, 32, 32, 3)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), param_shapes(encoder, x))
    with nn.intercept_methods(stop_at_stem), pytest.raises(_StemReached):
        encoder.apply({"params": params}, x)
    np.testing.assert_allclose(seen["x"], (x + 1.0) / 2.0)


@pytest.mark.slow  # 13 s cold on 2 cores (fast-tier budget)
def test_remat_keeps_param_names_and_gives_identical_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    plain = resnet.ResNetEncoder(latent_dim=64, head_num_layers=2)
    remat = resnet.ResNetEncoder(latent_dim=64, head_num_layers=2, remat=True)
    assert jax.tree.structure(param_shapes(plain, x)) == jax.tree.structure(param_shapes(remat, x))
    # Gradients through one rematerialised bottleneck (the unit remat wraps) match the plain block exactly.
    h = jax.random.normal(jax.random.key(1), (2, 8, 8, 64))
    block = resnet.BottleneckBlock(features=32, stride=2, use_projection=True)
    params = jax.tree.map(
        lambda s: 0.1 * jax.random.normal(jax.random.key(2), s.shape),
        jax.eval_shape(lambda: block.init(jax.random.key(0), h))["params"],
    )

    def loss(module, p):
        return jnp.sum(module.apply({"params": p}, h) ** 2)

    remat_block = nn.remat(resnet.BottleneckBlock)(features=32, stride=2, use_projection=True)
    g_plain = jax.jit(jax.grad(lambda p: loss(block, p)))(params)
    g_remat = jax.jit(jax.grad(lambda p: loss(remat_block, p)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), g_plain, g_remat)
    assert float(jnp.abs(g_plain["conv2"]["kernel"]).max()) > 0


def test_bad_arguments_are_reported():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="depth=42"):
        resnet.ResNetEncoder(depth=42).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="multiple of 32"):
        resnet.ResNetEncoder(latent_dim=20).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="at least 64"):
        resnet.ResNetEncoder(latent_dim=32).init(jax.random.key(0), x)


@pytest.mark.slow  # 28 s cold on 2 cores (fast-tier budget)
def test_small_basic_block_resnet_for_cpu_runs():
    """ResNet-18 (torchvision's 11.2M-parameter backbone without fc at base width 64), and the small-image stem."""
    full = models.build(dict(name="resnet", latent_dim=128, depth=18, head_num_layers=0))
    assert count(param_shapes(full, jnp.zeros((1, 32, 32, 3)))) == 11_176_512
    small = models.build(dict(name="resnet", latent_dim=64, depth=18, base_width=32, small_images=True, head_num_layers=2))
    x = jnp.zeros((2, 16, 16, 1))
    params = jax.jit(small.init)(jax.random.key(0), x)["params"]
    assert small.apply({"params": params}, x).shape == (2, 64)
    assert small.apply({"params": params}, x, apply_head=False).shape == (2, 256)
    with pytest.raises(ValueError, match="base_width=48"):
        models.build(dict(name="resnet", latent_dim=64, depth=18, base_width=48)).init(jax.random.key(0), x)
