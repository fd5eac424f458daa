"""The FID InceptionV3: layout, weights loading, and agreement with Keras' InceptionV3 graph."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax.evaluators import inception

# ConvBN names of each block type, in the order the TF graph (and torchvision, and Keras) creates them.
_A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"]
_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
_C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3"] + [f"branch7x7dbl_{i}" for i in range(1, 6)]
_C += ["branch_pool"]
_D = ["branch3x3_1", "branch3x3_2"] + [f"branch7x7x3_{i}" for i in range(1, 5)]
_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2"]
_E += ["branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
_BLOCKS = [("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A), ("Mixed_6a", _B)]
_BLOCKS += [(f"Mixed_6{c}", _C) for c in "bcde"] + [("Mixed_7a", _D), ("Mixed_7b", _E), ("Mixed_7c", _E)]
CREATION_ORDER = [(s,) for s in _STEM] + [(block, conv) for block, convs in _BLOCKS for conv in convs]


@pytest.fixture(scope="module")
def variables():
    return inception.init_inception_variables(0)


def test_state_dict_has_the_pytorch_fid_layout(variables):
    sd = inception.state_dict_from_variables(variables)
    assert len(CREATION_ORDER) == 94
    assert {k.rsplit(".", 2)[0] for k in sd} == {".".join(p) for p in CREATION_ORDER}
    assert len(sd) == 94 * 5
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert sd["Mixed_7c.branch3x3dbl_1.bn.running_var"].shape == (448,)
    # torchvision's InceptionV3 has 27,161,264 parameters; less its 1000-way fc (2,049,000) and aux head
    # (3,326,696), the convolutions and BN scale/shift of the pool_3 network are 21,785,568.
    assert sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var"))) == 21_785_568


def test_npz_round_trip_restores_every_leaf(variables, tmp_path):
    sd = inception.state_dict_from_variables(variables)
    # Keys a real state dict carries and the loader ignores.
    extras = {"fc.weight": np.zeros((1008, 2048)), "Mixed_5b.branch1x1.bn.num_batches_tracked": np.zeros(())}
    np.savez(tmp_path / "w.npz", **sd, **extras)
    loaded = inception.load_inception_params(tmp_path / "w.npz")
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), variables, loaded)))


def test_pth_round_trip_or_clear_error_without_torch(variables, tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-test.pth"
    sd = inception.state_dict_from_variables(variables)
    if importlib.util.find_spec("torch") is None:
        path.write_bytes(b"not read")
        with pytest.raises(ImportError, match="needs torch.*npz"):
            inception.load_inception_params(path)
        return
    import torch

    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    loaded = inception.load_inception_params(path)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), variables, loaded)))


def test_bad_weights_are_named(variables, tmp_path):
    sd = inception.state_dict_from_variables(variables)
    with pytest.raises(FileNotFoundError, match="inception_weights"):
        inception.load_inception_params(tmp_path / "absent.npz")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.npz"):
        inception.load_inception_params(tmp_path / "w.bin")
    missing = dict(sd)
    del missing["Mixed_6e.branch_pool.bn.bias"]
    with pytest.raises(KeyError, match="Mixed_6e.branch_pool.bn.bias"):
        inception.variables_from_state_dict(missing)
    with pytest.raises(ValueError, match="shape"):
        inception.variables_from_state_dict({**sd, "Conv2d_1a_3x3.bn.weight": np.zeros(31)})
    with pytest.raises(ValueError, match="unexpected keys"):
        inception.variables_from_state_dict({**sd, "AuxLogits.conv0.conv.weight": np.zeros(1)})


def test_tf_avg_pool_averages_real_pixels_only():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    pooled = inception.tf_avg_pool(x)
    assert pooled.shape == x.shape
    assert float(pooled[0, 0, 0, 0]) == pytest.approx(np.mean([0, 1, 4, 5]))
    assert float(pooled[0, 1, 1, 0]) == pytest.approx(np.mean([0, 1, 2, 4, 5, 6, 8, 9, 10]))


def test_pool3_features_at_299(variables):
    x = jax.random.uniform(jax.random.key(0), (1, 299, 299, 3), minval=-1, maxval=1)
    feats = jax.jit(inception.InceptionV3().apply)(variables, x)
    assert feats.shape == (1, inception.FEATURE_DIM)
    assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # a mean of ReLU outputs
    with pytest.raises(ValueError, match=">= 75"):
        inception.InceptionV3().apply(variables, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        inception.InceptionV3().apply(variables, jnp.zeros((1, 299, 299, 1)))


def _creation_index(name: str) -> int:
    """Keras auto-names layers 'conv2d', 'conv2d_1', ...: the suffix is the creation order."""
    suffix = name.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


@pytest.mark.slow  # 20 s cold on 2 cores (fast-tier budget)
def test_matches_keras_inception_v3_up_to_the_last_block(variables):
    """An independent implementation of the same TF graph: Keras' InceptionV3 (scale-free BN, same layout).

    Compared at Mixed_7b ('mixed9'), the last block both share: Keras average-pools in Mixed_7c where the FID
    graph max-pools. This checks every stride, padding, branch order and the pad-excluding average pools.
    """
    keras = pytest.importorskip("keras")
    model = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(139, 139, 3))
    def layers_of(kind):
        return sorted((l for l in model.layers if isinstance(l, kind)), key=lambda l: _creation_index(l.name))

    convs, bns = layers_of(keras.layers.Conv2D), layers_of(keras.layers.BatchNormalization)
    assert len(convs) == len(bns) == len(CREATION_ORDER)
    params = jax.tree.map(np.asarray, variables["params"])
    stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for path, conv, bn in zip(CREATION_ORDER, convs, bns):
        p, s = inception._get(params, path), inception._get(stats, path)
        p["bn"]["scale"] = np.ones_like(p["bn"]["scale"])  # Keras' InceptionV3 has no BN scale
        conv.set_weights([p["conv"]["kernel"]])
        bn.set_weights([p["bn"]["bias"], s["bn"]["mean"], s["bn"]["var"]])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 139, 139, 3)).astype(np.float32)
    expected = keras.Model(model.input, model.get_layer("mixed9").output)(x).numpy()
    _, state = inception.InceptionV3().apply(
        {"params": params, "batch_stats": stats}, x, capture_intermediates=lambda m, _: m.name == "Mixed_7b"
    )
    got = np.asarray(state["intermediates"]["Mixed_7b"]["__call__"][0])
    assert got.shape == expected.shape == (2, 3, 3, 2048)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
