"""Every public method of `api.LZN`, eagerly and under jit, vmap and grad, on params from `api.load`.

Shared by tests/test_api_transforms.py (one device) and tests/multidevice/test_api_sharded.py (an 8-device mesh).
The params come from a real short training run (`train.train_and_evaluate`), so they are what users load: arrays
restored by Orbax from a run on the explicit-axes train mesh. Such params once failed every eager vmap and grad
with "Passing lowering_platforms ... is required when only AbstractMesh exists".
"""

import jax
import jax.numpy as jnp
import numpy as np

from lzn_jax import configlib, train

TRAIN_STEPS = 2


def short_run_config(config):
    """`config` trained for TRAIN_STEPS steps with a checkpoint at the end and no evaluator."""
    config = configlib.override(config, num_train_steps=TRAIN_STEPS, checkpoint_every_steps=TRAIN_STEPS,
                                log_every_steps=TRAIN_STEPS)  # fmt: skip
    for spec in config.evals.values():
        spec.every_steps = -1
    return config


def train_short_run(config, workdir) -> None:
    """The road `python -m lzn_jax.main` takes: train.train_and_evaluate into `workdir`."""
    train.train_and_evaluate(short_run_config(config), str(workdir))


def _close(a, b, what, tol=1e-3):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol, err_msg=what)


def _finite_grads(tree, what):
    leaves = jax.tree.leaves(tree)
    assert leaves and all(np.all(np.isfinite(np.asarray(g))) for g in leaves), f"{what}: non-finite gradient"
    assert any(np.any(np.asarray(g) != 0) for g in leaves), f"{what}: all-zero gradient"


def check_every_method(lzn, params, images, methods=None):
    """images [B, H, W, C] in [-1, 1] (possibly sharded): each method in `methods` (default: every one of
    METHODS) x {eager, jit, vmap over keys, grad}."""
    for name in methods or METHODS:
        METHODS[name](lzn, params, images, jax.random.key(0))


def _embed(lzn, params, images, key):
    """images -> anchors"""
    eager = lzn.embed(params, images)
    _close(jax.jit(lzn.embed)(params, images), eager, "jit(embed)")
    _close(jax.vmap(lzn.embed, in_axes=(None, 0))(params, images[None]), eager[None], "vmap(embed)")
    grads = jax.grad(lambda p, x: lzn.embed(p, x).sum(), argnums=(0, 1))(params, images)  # one program, both
    _finite_grads(grads[0], "grad(embed) wrt params")
    _finite_grads(grads[1], "grad(embed) wrt images")


def _latents(lzn, params, images, key):
    """images -> zones"""
    keys = jax.random.split(key, 2)
    eager = lzn.latents(params, images, key=key)
    _close(jax.jit(lambda p, x, k: lzn.latents(p, x, key=k))(params, images, key), eager, "jit(latents)")
    per_key = jax.vmap(lambda k: lzn.latents(params, images, key=k))(keys)
    _close(per_key[0], lzn.latents(params, images, key=keys[0]), "vmap(latents) over keys")
    grads = jax.grad(lambda p, x: lzn.latents(p, x, key=key).sum(), argnums=(0, 1))(params, images)
    _finite_grads(grads[0], "grad(latents) wrt params")
    _finite_grads(grads[1], "grad(latents) wrt images")


def _classify(lzn, params, images, key):
    """images -> labels (integers: no gradient)"""
    keys = jax.random.split(key, 2)
    eager = lzn.classify(params, images, key=key)
    np.testing.assert_array_equal(jax.jit(lambda p, x, k: lzn.classify(p, x, key=k))(params, images, key), eager)
    per_key = jax.vmap(lambda k: lzn.classify(params, images, key=k))(keys)
    np.testing.assert_array_equal(per_key[0], lzn.classify(params, images, key=keys[0]))


def _generate(lzn, params, images, key):
    """labels -> images"""
    keys = jax.random.split(key, 2)
    labels = jnp.arange(2) % lzn.task.num_classes
    eager = lzn.generate(params, key, labels=labels)
    _close(jax.jit(lambda p, k, y: lzn.generate(p, k, labels=y))(params, key, labels), eager, "jit(generate)")
    per_key = jax.vmap(lambda k: lzn.generate(params, k, labels=labels))(keys)
    _close(per_key[0], lzn.generate(params, keys[0], labels=labels), "vmap(generate) over keys")
    _finite_grads(jax.grad(lambda p: lzn.generate(p, key, labels=labels).sum())(params), "grad(generate)")


def _reconstruct(lzn, params, images, key):
    """images -> latent -> noise -> images"""
    keys = jax.random.split(key, 2)
    eager = lzn.reconstruct(params, images, key=key)
    _close(jax.jit(lambda p, x, k: lzn.reconstruct(p, x, key=k))(params, images, key), eager, "jit(reconstruct)")
    per_key = jax.vmap(lambda k: lzn.reconstruct(params, images, key=k))(keys)
    _close(per_key[1], lzn.reconstruct(params, images, key=keys[1]), "vmap(reconstruct) over keys")
    _finite_grads(jax.grad(lambda x: lzn.reconstruct(params, x, key=key).sum())(images), "grad(reconstruct)")


def _interpolate(lzn, params, images, key):
    """two images -> a path of images; `steps` is static under jit"""
    keys = jax.random.split(key, 2)
    eager = lzn.interpolate(params, images[0], images[1], 3, key=key, context=images[2:])
    jitted = jax.jit(lzn.interpolate, static_argnames="steps")
    _close(jitted(params, images[0], images[1], 3, key=key, context=images[2:]), eager, "jit(interpolate)")
    per_key = jax.vmap(lambda k: lzn.interpolate(params, images[0], images[1], 3, key=k))(keys)
    _close(per_key[0], lzn.interpolate(params, images[0], images[1], 3, key=keys[0]), "vmap(interpolate)")
    _finite_grads(jax.grad(lambda a: lzn.interpolate(params, a, images[1], 3, key=key).sum())(images[0]),
                  "grad(interpolate) wrt an end")  # fmt: skip


METHODS = {"embed": _embed, "latents": _latents, "classify": _classify, "generate": _generate,
           "reconstruct": _reconstruct, "interpolate": _interpolate}  # fmt: skip
