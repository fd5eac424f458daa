"""NCSN++ encoder/decoder: shapes, options, initialisation, dtype, dropout, FIR resampling."""

import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax import models, tasks
from lzn_jax.models import layers, layerspp, ncsnpp

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


def _decoder_args(batch=2, size=8, latent_dim=5, num_classes=3, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    latent = jax.random.normal(keys[0], (batch, latent_dim)) if latent_dim else None
    label = jax.nn.one_hot(jnp.arange(batch) % num_classes, num_classes) if num_classes else None
    t = jax.random.uniform(keys[2], (batch,), minval=0.05, maxval=1.0)
    xt = jax.random.normal(keys[3], (batch, size, size, 3))
    return latent, label, t, xt


def _random_params(model, *args, scale=0.1, seed=0):
    """Random N(0, scale²) params shaped like `model`'s (eval_shape only: no slow compile of the initialisers)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def _fresh_params(model, *args):
    """A real `init` (the cheap-to-compile RNG keeps CPU test time low)."""
    return jax.jit(model.init)(jax.random.key(1, impl="unsafe_rbg"), *args)["params"]


# ----------------------------------------------------------------------------------------------------------------
# Shapes and architecture options.


@pytest.mark.slow  # 11 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize(
    "resblock_type,fir,progressive,progressive_input,combine,embedding",
    [
        ("biggan", False, "none", "none", "sum", "positional"),
        ("biggan", True, "output_skip", "input_skip", "sum", "fourier"),
        ("biggan", True, "residual", "residual", "sum", "fourier"),
        ("biggan", False, "output_skip", "input_skip", "cat", "positional"),
        ("ddpm", False, "none", "none", "sum", "positional"),
        ("ddpm", True, "residual", "input_skip", "cat", "fourier"),
    ],
)
def test_decoder_and_encoder_shapes_for_every_option(
    resblock_type, fir, progressive, progressive_input, combine, embedding
):
    trunk = dict(TINY, resblock_type=resblock_type, fir=fir, progressive_input=progressive_input,
                 progressive_combine=combine)
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=3, progressive=progressive, embedding_type=embedding,
                                   **trunk)
    args = _decoder_args()
    out = jax.eval_shape(lambda: decoder.init_with_output(jax.random.key(0), *args)[0])
    assert out.shape == (2, 8, 8, 3)
    encoder = ncsnpp.NCSNPPEncoder(latent_dim=7, num_base_channels=2, num_base_units=6, **trunk)
    out = jax.eval_shape(lambda: encoder.init_with_output(jax.random.key(0), args[3])[0])
    assert out.shape == (2, 7)


@pytest.mark.slow  # 12 s cold on 2 cores (fast-tier budget)
def test_fir_progressive_decoder_runs_and_is_finite():
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, fir=True, progressive="output_skip", progressive_input="input_skip",
                                   embedding_type="fourier", scale_by_sigma=True, **TINY)
    latent, _, t, xt = _decoder_args(num_classes=0)
    out = decoder.apply({"params": _random_params(decoder, latent, None, t, xt)}, latent, None, t, xt)
    assert out.shape == xt.shape and bool(jnp.all(jnp.isfinite(out)))


def test_encoder_heads_only_at_requested_resolutions():
    encoder = ncsnpp.NCSNPPEncoder(latent_dim=4, num_base_channels=2, num_base_units=3,
                                   latent_transformation_resolutions=(4,), **TINY)
    params = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))["params"]
    heads = sorted(k for k in params if k.startswith("head"))
    # skips: conv_in(8), down0_res0(8), down0_resample(4), down1_res0(4), then the middle block (4)
    assert heads == ["head2", "head3", "head4"]
    assert params["head2"]["Dense_0"]["kernel"].shape == (4 * 4 * 2, 3)


def test_encoder_head_mlp_depth():
    encoder = ncsnpp.NCSNPPEncoder(latent_dim=4, num_base_channels=2, num_base_units=3,
                                   num_latent_transformation_layers=4, **TINY)
    params = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))["params"]
    dense = params["head0"]
    assert [dense[f"Dense_{i}"]["kernel"].shape for i in range(4)] == [(128, 3), (3, 3), (3, 3), (3, 4)]


# ----------------------------------------------------------------------------------------------------------------
# Inputs and errors.


def test_decoder_rejects_mismatched_inputs():
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=3, **TINY)
    latent, label, t, xt = _decoder_args()
    params = {"params": _random_params(decoder, latent, label, t, xt)}
    with pytest.raises(ValueError, match="latent is None"):
        decoder.apply(params, None, label, t, xt)
    with pytest.raises(ValueError, match=r"label must have shape \[B, 3\]"):
        decoder.apply(params, latent, label[:, :2], t, xt)
    with pytest.raises(ValueError, match="t must have shape"):
        decoder.apply(params, latent, label, t[:1], xt)


def test_unconditional_decoder_takes_none_label_and_conditions_on_latent():
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=0, **TINY)
    latent, _, t, xt = _decoder_args(num_classes=0)
    params = _random_params(decoder, latent, None, t, xt)
    assert params["cond_dense0"]["kernel"].shape == (5 + TINY["nf"], 4 * TINY["nf"])
    with pytest.raises(ValueError, match="pass None"):
        decoder.apply({"params": params}, latent, jnp.zeros((2, 1)), t, xt)
    a = decoder.apply({"params": params}, latent, None, t, xt)
    b = decoder.apply({"params": params}, latent + 1.0, None, t, xt)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_invalid_option_names_are_reported():
    latent, label, t, xt = _decoder_args()
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=3, progressive="skip", **TINY)
    with pytest.raises(ValueError, match="progressive='skip'"):
        decoder.init(jax.random.key(0), latent, label, t, xt)
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=3, scale_by_sigma=True, **TINY)
    with pytest.raises(ValueError, match="scale_by_sigma"):
        decoder.init(jax.random.key(0), latent, label, t, xt)


# ----------------------------------------------------------------------------------------------------------------
# Initialisation (as upstream: DDPM variance scaling, ~zero output layers, frozen Fourier frequencies).


@pytest.mark.slow  # 12 s cold on 2 cores (fast-tier budget)
def test_fresh_decoder_outputs_almost_zero_because_output_conv_is_zero_scaled():
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=3, **TINY)
    args = _decoder_args()
    params = _fresh_params(decoder, *args)
    out = decoder.apply({"params": params}, *args)
    assert float(jnp.abs(out).max()) < 1e-3  # inputs are O(1)
    # init_scale=0 means variance scale 1e-10: weights ~1e-6 where ordinary layers have ~1e-1.
    for layer in (params["out_conv"], params["down0_res0"]["Conv_1"], params["mid_attn"]["NIN_3"]):
        assert float(jnp.abs(layer["kernel"]).max()) < 1e-4
    assert float(jnp.abs(params["down0_res0"]["Conv_0"]["kernel"]).max()) > 1e-2


def test_default_init_is_fan_avg_uniform():
    kernel = layers.default_init()(jax.random.key(0), (3, 3, 64, 32))
    fan_avg = 9 * (64 + 32) / 2
    np.testing.assert_allclose(float(jnp.var(kernel)), 1.0 / fan_avg, rtol=0.05)
    assert float(jnp.abs(kernel).max()) <= np.sqrt(3.0 / fan_avg)
    nin = layers.NIN(16).init(jax.random.key(0), jnp.zeros((1, 16)))["params"]["kernel"]
    np.testing.assert_allclose(float(jnp.var(nin)), 0.1 / 16, rtol=0.3)


def test_group_norm_is_accurate_for_groups_with_a_large_mean():
    """Two-pass statistics, as torch: E[x²] − E[x]² would cancel catastrophically here."""
    x = 50.0 + 0.01 * np.random.default_rng(0).standard_normal((2, 4, 4, 16)).astype(np.float32)
    norm = layers.group_norm(16)  # 4 groups of 4 channels
    out = norm.apply(norm.init(jax.random.key(0), x), x)
    g = x.reshape(2, 4, 4, 4, 4).astype(np.float64)
    mean, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
    np.testing.assert_allclose(out, ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape), atol=2e-3)


def test_fourier_frequencies_are_a_frozen_parameter():
    decoder = ncsnpp.NCSNPPDecoder(latent_dim=5, num_classes=3, embedding_type="fourier", fourier_scale=16.0, **TINY)
    shapes = jax.eval_shape(lambda: decoder.init(jax.random.key(0), *_decoder_args()))["params"]
    assert shapes["time_fourier"]["W"].shape == (TINY["nf"],)
    fourier = layerspp.GaussianFourierProjection(256, scale=16.0)
    t = jnp.array([0.1, 0.7])
    w = fourier.init(jax.random.key(0), t)["params"]["W"]
    np.testing.assert_allclose(float(jnp.std(w)), 16.0, rtol=0.15)
    grad = jax.grad(lambda p: jnp.sum(fourier.apply({"params": p}, t) ** 3))({"W": w})
    assert float(jnp.abs(grad["W"]).max()) == 0.0


# ----------------------------------------------------------------------------------------------------------------
# Dropout and mixed precision.


@pytest.mark.slow  # 14 s cold on 2 cores (fast-tier budget)
def test_dropout_only_in_training_and_driven_by_the_dropout_rng():
    encoder = ncsnpp.NCSNPPEncoder(latent_dim=4, num_base_channels=2, num_base_units=3, **dict(TINY, dropout=0.5))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    params = {"params": _random_params(encoder, x)}
    apply = encoder.apply
    eval_a, eval_b = apply(params, x), apply(params, x, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train = [apply(params, x, train=True, rngs={"dropout": jax.random.key(s)}) for s in (0, 0, 1)]
    np.testing.assert_array_equal(train[0], train[1])
    assert float(jnp.abs(train[0] - train[2]).max()) > 0
    assert float(jnp.abs(train[0] - eval_a).max()) > 0


@pytest.mark.slow  # 33 s in the full suite at 245ce7d, 2 cores (fast-tier budget)
def test_remat_keeps_params_outputs_and_gradients():
    """`remat=True` (the memory knob of the 256 px configs, docs/scaling.md) only changes what the backward pass
    stores: the same param tree, and, in training mode with dropout, the same output and gradients. Bugs this
    catches: a renamed block (checkpoints and converted official weights would no longer load), and a `train`
    flag traced by jax.checkpoint (dropout's Python branch would fail) or dropped (dropout silently off).
    One level (no up/down-sampling blocks): every residual block, those included, is wrapped by the same line of
    `_resblock`; with two levels this test took 81 s of the full suite, with one 33 s on a slower hour
    (docs/results/test_times.txt, stop 29)."""
    kw = dict(latent_dim=5, num_classes=3, **dict(TINY, dropout=0.5, ch_mult=(1,), attn_resolutions=(8,)))
    latent, label, t, xt = _decoder_args()
    plain, remat = ncsnpp.NCSNPPDecoder(**kw), ncsnpp.NCSNPPDecoder(**kw, remat=True)
    params = {"params": _random_params(plain, latent, label, t, xt)}
    assert jax.tree.structure(jax.eval_shape(lambda: remat.init(jax.random.key(0), latent, label, t, xt))["params"]) == \
        jax.tree.structure(params["params"])  # fmt: skip

    def loss(model, p):
        out = model.apply(p, latent, label, t, xt, train=True, rngs={"dropout": jax.random.key(3)})
        return jnp.sum(out**2)

    (value, grads), (value_remat, grads_remat) = (jax.value_and_grad(loss, 1)(m, params) for m in (plain, remat))
    np.testing.assert_allclose(value_remat, value, rtol=1e-6)
    assert float(jnp.abs(loss(plain, params) - loss(plain, params))) == 0  # deterministic under one dropout key
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_remat, grads)


@pytest.mark.slow  # 19 s cold on 2 cores (fast-tier budget)
def test_bfloat16_forward_tracks_float32():
    kw = dict(latent_dim=5, num_classes=3, **TINY)
    args = _decoder_args()
    f32 = ncsnpp.NCSNPPDecoder(**kw)
    params = _random_params(f32, *args)
    bf16 = ncsnpp.NCSNPPDecoder(dtype=jnp.bfloat16, **kw)
    ref = f32.apply({"params": params}, *args)
    out = bf16.apply({"params": params}, *args)
    assert out.dtype == jnp.bfloat16
    assert jax.tree.leaves(params)[0].dtype == jnp.float32
    rel = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 0.05


# ----------------------------------------------------------------------------------------------------------------
# FIR resampling against a direct numpy transcription of upfirdn2d (zero insertion, pad, convolve, decimate).


def _upfirdn_numpy(x, kernel, up, down, pad):
    b, h, w, c = x.shape
    z = np.zeros((b, h * up, w * up, c))
    z[:, ::up, ::up] = x
    z = np.pad(z, ((0, 0), pad, pad, (0, 0)))
    k = kernel.shape[0]
    out_h, out_w = z.shape[1] - k + 1, z.shape[2] - k + 1
    out = np.zeros((b, out_h, out_w, c))
    for i, j in itertools.product(range(k), range(k)):
        out += kernel[k - 1 - i, k - 1 - j] * z[:, i : i + out_h, j : j + out_w]  # true convolution
    return out[:, ::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (1, 1)), (2, 2, (0, 3))])
def test_upfirdn2d_matches_definition(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 3))
    kernel = rng.normal(size=(4, 4))  # asymmetric, so a missing flip would show
    ours = layers.upfirdn2d(jnp.asarray(x, jnp.float32), kernel, up=up, down=down, pad=pad)
    np.testing.assert_allclose(np.asarray(ours), _upfirdn_numpy(x, kernel, up, down, pad), rtol=1e-5, atol=1e-5)


def test_fir_resampling_preserves_constants_and_fused_convs_match_composition():
    ones = jnp.ones((1, 8, 8, 2))
    np.testing.assert_allclose(layers.upsample_2d(ones, (1, 3, 3, 1))[:, 2:-2, 2:-2], 1.0, rtol=1e-6)
    np.testing.assert_allclose(layers.downsample_2d(ones, (1, 3, 3, 1))[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 6, 2))
    w = rng.normal(size=(3, 3, 2, 4))  # HWIO
    fir = layers.fir_kernel_2d((1, 3, 3, 1))
    # conv_downsample = FIR (pad 2, 2), then a VALID stride-2 correlation with w.
    filtered = _upfirdn_numpy(x, fir, 1, 1, (2, 2))
    expected = np.zeros((1, 3, 3, 4))
    for r, c in itertools.product(range(3), range(3)):
        expected[:, r, c] = np.einsum("bhwi,hwio->bo", filtered[:, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3], w)
    ours = layers.conv_downsample_2d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), (1, 3, 3, 1))
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-4)
    # upsample_conv = torch's conv_transpose2d (stride 2) with upstream's flipped, in/out-swapped weight,
    # written from the definition y[2i + a] += x[i] * w[2 - a], then FIR with pad (1, 1) and gain 4.
    transposed = np.zeros((1, 13, 13, 4))
    for i, j, a, c in itertools.product(range(6), range(6), range(3), range(3)):
        transposed[:, 2 * i + a, 2 * j + c] += x[:, i, j] @ w[2 - a, 2 - c]
    expected = _upfirdn_numpy(transposed, fir * 4, 1, 1, (1, 1))
    ours = layers.upsample_conv_2d(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), (1, 3, 3, 1))
    assert ours.shape == (1, 12, 12, 4)
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=1e-4)


def test_timestep_embedding_layout():
    emb = layers.timestep_embedding(jnp.array([0.0, 10.0]), 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    freqs = np.exp(-np.log(10000) * np.arange(4) / 3)
    np.testing.assert_allclose(emb[1], np.concatenate([np.sin(10 * freqs), np.cos(10 * freqs)]), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The architectures of configs/ have the official parameter counts (traced with eval_shape: nothing allocated).

PINNED_COUNTS = {  # config: (encoder, decoder)
    "joint_cifar10": (49_790_260, 61_911_939),
    "gen_cifar10": (49_790_260, 61_906_819),
    "gen_afhq_cat": (87_768_896, 65_676_949),
    "gen_celebahq": (87_768_896, 65_676_949),
    "gen_lsun_bedroom": (87_768_896, 65_676_949),
}


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def count_params(model, *args) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


@pytest.mark.slow  # 16 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", sorted(PINNED_COUNTS))
def test_config_models_build_with_official_parameter_counts(name):
    config = load_config(name)
    size, channels = config.data.image_size, config.data.num_channels
    images = jnp.zeros((1, size, size, channels))
    sections = tasks.model_configs(config)
    encoder, decoder = models.build(sections["encoder"]), models.build(sections["decoder"])
    assert isinstance(encoder, ncsnpp.NCSNPPEncoder) and isinstance(decoder, ncsnpp.NCSNPPDecoder)
    assert encoder.latent_dim == decoder.latent_dim == config.latent_dim
    num_classes = decoder.num_classes
    label = jnp.zeros((1, num_classes)) if num_classes else None
    counts = (
        count_params(encoder, images),
        count_params(decoder, jnp.zeros((1, config.latent_dim)), label, jnp.full((1,), 0.5), images),
    )
    assert counts == PINNED_COUNTS[name]
