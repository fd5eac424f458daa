"""The public inference API: compositions of the encoders and decoders, their input checks, and loading."""

import collections
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import tiny_joint_config, tiny_joint_model

from lzn_jax import api, checkpoint, configlib, train

@pytest.fixture(scope="module")
def model():
    return tiny_joint_model()


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(6, 8, 8, 1)), jnp.float32)


@pytest.mark.slow  # 90 s cold on 2 cores (fast-tier budget)
def test_compositions_have_the_documented_shapes(model, images):
    lzn, params = model
    key = jax.random.key(1)
    assert lzn.embed(params, images).shape == (6, 32)
    assert lzn.latents(params, images, key=key).shape == (6, 32)
    labels = lzn.classify(params, images, key=key)
    assert labels.shape == (6,) and jnp.issubdtype(labels.dtype, jnp.integer)
    assert np.all((np.asarray(labels) >= 0) & (np.asarray(labels) < 10))
    generated = lzn.generate(params, key, labels=jnp.arange(4))
    assert generated.shape == (4, 8, 8, 1) and np.all(np.isfinite(generated))
    assert lzn.reconstruct(params, images, key=key).shape == images.shape
    path = lzn.interpolate(params, images[0], images[1], steps=5, key=key)
    assert path.shape == (5, 8, 8, 1)


@pytest.mark.slow  # 11 s cold on 2 cores (fast-tier budget)
def test_the_methods_are_pure_and_jittable(model, images):
    lzn, params = model
    key = jax.random.key(2)
    eager = lzn.classify(params, images, key=key)
    jitted = jax.jit(lambda p, x, k: lzn.classify(p, x, key=k))(params, images, key)
    np.testing.assert_array_equal(eager, jitted)
    # The key is the only randomness: jit gives the eager latents, another key other latents (the prior draw).
    latents = lzn.latents(params, images, key=key)
    np.testing.assert_allclose(jax.jit(lambda p, x, k: lzn.latents(p, x, key=k))(params, images, key), latents,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert not np.allclose(lzn.latents(params, images, key=jax.random.key(7)), latents)


@pytest.mark.slow  # 13 s cold on 2 cores beside a training run (fast-tier budget)
def test_eager_calls_trace_each_network_and_flow_once_per_shape(model, images, monkeypatch):
    """A repeated eager call reuses the compiled programs of its first call. The bug this guards against: the
    methods ran the task's functions op by op, so every call traced the networks and the ODE loops again
    (digits_joint:runlocal's `reconstruct`: 5.2 s per call, 0.29 s compiled; docs/results/api_eager.json)."""
    lzn, params = model
    fresh = api.LZN(task=lzn.task, config=lzn.config)  # its own, empty, cache of compiled functions
    task_class, traced = type(lzn.task), collections.Counter()
    names = ("image_latents", "classify_latents", "invert", "decode")
    for name in names:  # counts the Python calls of each task function: one per trace when compiled

        def counting(self, *args, _name=name, _original=getattr(task_class, name), **kwargs):
            traced[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(task_class, name, counting)
    key = jax.random.key(4)
    first = fresh.reconstruct(params, images, key=key)
    after_one_call = dict(traced)
    np.testing.assert_array_equal(fresh.reconstruct(params, images, key=key), first)
    assert set(after_one_call) == set(names) and dict(traced) == after_one_call


def test_latents_depend_on_the_zoning_batch_and_context_makes_that_explicit(model, images):
    """An image's latent is its zone in the mixture of every image it is encoded with."""
    lzn, params = model
    key = jax.random.key(3)
    alone = lzn.latents(params, images[:2], key=key, prior_std=0.0)
    with_context = lzn.latents(params, images[:2], key=key, context=images[2:], prior_std=0.0)
    assert with_context.shape == (2, 32)
    assert not np.allclose(alone, with_context)
    np.testing.assert_allclose(with_context, lzn.latents(params, images, key=key, prior_std=0.0)[:2], rtol=1e-5)


def test_deterministic_latents_with_prior_std_zero(model, images):
    lzn, params = model
    a = lzn.latents(params, images, key=jax.random.key(4), prior_std=0.0)
    b = lzn.latents(params, images, key=jax.random.key(5), prior_std=0.0)
    np.testing.assert_array_equal(a, b)


def test_slerp_keeps_the_ends_and_the_norm():
    a, b = jnp.asarray([3.0, 0.0]), jnp.asarray([0.0, 3.0])
    path = api.slerp(a, b, jnp.linspace(0, 1, 5))
    np.testing.assert_allclose(path[0], a, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(path, axis=-1), 3.0, rtol=1e-5)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, p, x: m.embed(p, x[:, :4]), ValueError, "this model takes (8, 8, 1)"),
        (lambda m, p, x: m.embed(p, x[0]), ValueError, "must be a batch [B, H, W, C]"),
        (lambda m, p, x: m.embed(p, jnp.repeat(x, 3, axis=-1)), ValueError, "this model takes (8, 8, 1)"),
        (lambda m, p, x: m.embed(p, (x * 127).astype(jnp.uint8)), TypeError, "x / 127.5 - 1"),
        (lambda m, p, x: m.embed(p, x[:0]), ValueError, "is empty"),
        (lambda m, p, x: m.classify(p, x[:, :, :6], key=jax.random.key(0)), ValueError, "(8, 6, 1)"),
        (lambda m, p, x: m.generate(p, jax.random.key(0)), ValueError, "label-conditional: pass labels"),
        (lambda m, p, x: m.generate(p, jax.random.key(0), labels=jnp.zeros((2, 1), jnp.int32)), ValueError, "int array [B]"),
        (lambda m, p, x: m.generate(p, jax.random.key(0), labels=jnp.zeros(2)), ValueError, "int array [B]"),
        (lambda m, p, x: m.generate(p, jax.random.key(0), labels=jnp.arange(2), sampler="ddim"), ValueError, "Unknown sampler"),
        # Each of these three passed silently: `num` was ignored, and reconstruct's labels were never checked (an
        # out-of-range label became an all-zero one-hot: a finite, wrong reconstruction).
        (lambda m, p, x: m.generate(p, jax.random.key(0), labels=jnp.arange(2), num=5), ValueError, "`num`=5 but 2 labels"),
        (lambda m, p, x: m.reconstruct(p, x, key=jax.random.key(0), labels=jnp.full((len(x),), 99)), ValueError,
         "`labels` must be in [0, 10)"),
        (lambda m, p, x: m.reconstruct(p, x, key=jax.random.key(0), labels=jnp.zeros((1,), jnp.int32)), ValueError,
         "`labels` has 1 labels for"),
        (lambda m, p, x: m.interpolate(p, x[0], x[1], steps=1, key=jax.random.key(0)), ValueError, "at least 2"),
        (lambda m, p, x: m.latents(p, x, key=jax.random.key(0), context=x[:, :4]), ValueError, "`context`"),
    ],
)
def test_bad_inputs_say_what_was_expected(model, images, call, error, message):
    lzn, params = model
    with pytest.raises(error) as info:
        call(lzn, params, images)
    assert message in str(info.value)


def test_reconstruct_with_an_out_of_range_label_under_jit_gives_nan_not_a_plausible_image(model, images):
    """Traced labels cannot be range-checked; as in `generate`, such a label's image comes back NaN."""
    lzn, params = model
    labels = jnp.zeros((len(images),), jnp.int32).at[0].set(99)
    out = jax.jit(lambda y: lzn.reconstruct(params, images, key=jax.random.key(0), labels=y))(labels)
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1:]))


def test_compositions_the_model_lacks_are_refused():
    config = configlib.override(tiny_joint_config(), conditional=False, **{"encoder.name": ""})
    lzn = api.LZN.from_config(config)
    params = lzn.task.init(jax.random.key(0), {"image": jnp.zeros((2, 8, 8, 1)), "label": jnp.zeros((2,), jnp.int32)})
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match="cannot embed images"):
        lzn.embed(params, x)
    with pytest.raises(ValueError, match="cannot classify"):
        lzn.classify(params, x, key=jax.random.key(0))
    with pytest.raises(ValueError, match="Pass `num`"):
        lzn.generate(params, jax.random.key(0))
    with pytest.raises(ValueError, match="not label-conditional: pass `num`"):  # labels used to set the count
        lzn.generate(params, jax.random.key(0), labels=jnp.arange(3), num=3)
    assert lzn.generate(params, jax.random.key(0), num=3).shape == (3, 8, 8, 1)


@pytest.mark.slow  # 59 s cold on 2 cores (fast-tier budget)
def test_load_a_workdir_written_by_training(tmp_path):
    """A workdir as lzn_jax.main leaves it: config.json and an Orbax checkpoint of the train state."""
    config = tiny_joint_config()
    run = train.setup(config, str(tmp_path))  # a fresh state, as at the start of training
    state = run.state.replace(ema_params=jax.tree.map(lambda x: x + 1.0, run.state.params))
    train._write_config(config, str(tmp_path))
    checkpoint.save(run.manager, 7, state.to_items())
    run.manager.wait_until_finished()
    lzn, params = api.load(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, params, state.ema_params)
    _, raw = api.load(str(tmp_path), use_ema=False)
    jax.tree.map(np.testing.assert_array_equal, raw, state.params)
    assert lzn.classify(params, jnp.zeros((3, 8, 8, 1)), key=jax.random.key(0)).shape == (3,)
    with pytest.raises(FileNotFoundError, match="'.*nowhere' does not exist"):
        api.load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="has no config.json .* api.load.directory, config="):
        api.load(str(tmp_path / "checkpoints"))
    # A checkpoint directory without config.json, with the config as a file (how convert's --out is loaded); a
    # path string once failed with an AttributeError inside LZN.from_config.
    config_file = tmp_path / "tiny.py"
    config_file.write_text("from support import tiny_joint_config\n\n\n"
                           "def get_config():\n    return tiny_joint_config()\n")  # fmt: skip
    _, from_file = api.load(tmp_path / "checkpoints", config=str(config_file))
    jax.tree.map(np.testing.assert_array_equal, from_file, state.ema_params)


def test_embed_without_head_is_refused_for_an_encoder_that_has_no_separate_head(model, images):
    """NCSN++ encoders end in anchor heads: apply_head=False once returned the anchors silently."""
    lzn, params = model
    with pytest.raises(ValueError, match=r"apply_head=False: this model's image encoder \(NCSNPPEncoder"):
        lzn.embed(params, images, apply_head=False)


@pytest.mark.parametrize("method, argument, jitted_call", [
    ("interpolate", "steps", lambda fn, p, x: jax.jit(fn)(p, x[0], x[1], 3, key=jax.random.key(0))),
    ("embed", "apply_head", lambda fn, p, x: jax.jit(fn)(p, x, apply_head=True)),
    ("generate", "num", lambda fn, p, x: jax.jit(fn)(p, jax.random.key(0), jnp.arange(2), num=2)),
])  # fmt: skip
def test_a_shape_argument_traced_under_jit_asks_to_be_marked_static(model, images, method, argument, jitted_call):
    """Bug: jitting `embed` or `generate` without static_argnames gave JAX's TracerBoolConversionError from deep in
    the task, naming neither the argument nor the fix."""
    lzn, params = model
    with pytest.raises(TypeError, match=re.escape(f'jax.jit(lzn.{method}, static_argnames="{argument}")')):
        jitted_call(getattr(lzn, method), params, images)


def test_importing_the_api_pulls_in_no_training_code():
    """Inference apart from training: api.load once imported train, train_state and optim for the params' shapes."""
    script = "import sys, lzn_jax.api; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split())
    assert "lzn_jax.api" in loaded
    assert not loaded & {"lzn_jax.train", "lzn_jax.train_state", "lzn_jax.optim", "optax", "clu", "tensorflow"}
