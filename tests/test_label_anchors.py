"""Label anchors: the N(0, 1) table, and latent -> label by nearest anchor (checked against the official code)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax import models, tasks
from lzn_jax.models.label_anchors import LabelAnchors
from lzn_jax.zoning import nearest_anchor as nearest_label

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_table_shape_init_and_dtype():
    module = LabelAnchors(num_classes=500, latent_dim=64)
    params = module.init(jax.random.key(0))["params"]
    assert set(params) == {"anchors"}
    table = module.apply({"params": params})
    assert table.shape == (500, 64) and table.dtype == jnp.float32
    np.testing.assert_allclose(float(table.mean()), 0.0, atol=0.02)
    np.testing.assert_allclose(float(table.std()), 1.0, rtol=0.02)
    half = LabelAnchors(num_classes=3, latent_dim=4, dtype=jnp.bfloat16)
    assert half.apply({"params": half.init(jax.random.key(0))["params"]}).dtype == jnp.bfloat16


def test_joint_config_builds_label_anchors():
    spec = importlib.util.spec_from_file_location("joint_cifar10", REPO_ROOT / "configs" / "joint_cifar10.py")
    config_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_module)
    config = config_module.get_config()
    module = models.build(tasks.model_configs(config)["label_anchors"])
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0)))["params"]
    assert shapes["anchors"].shape == (10, 200)


def test_nearest_label_matches_brute_force():
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(7, 5))
    points = rng.normal(size=(200, 5)) * 2 + 10  # far from the origin: |p|² dwarfs the distance gaps
    brute = np.argmin(((points[:, None, :] - anchors[None]) ** 2).sum(-1), axis=1)
    labels = nearest_label(jnp.asarray(anchors, jnp.float32), jnp.asarray(points, jnp.float32))
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, brute)


def test_nearest_label_reproduces_official_predictions(latent_flows_file):
    ref = np.load(latent_flows_file)
    labels = nearest_label(jnp.asarray(ref["l_label_anchors"]), jnp.asarray(ref["l_final"]))
    np.testing.assert_array_equal(labels, ref["l_predicted"])


def test_nearest_label_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"anchors \[K, D\] and points \[B, D\]"):
        nearest_label(jnp.zeros((3, 4)), jnp.zeros((2, 5)))
