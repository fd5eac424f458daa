"""FID math against scipy, the two resizing pipelines, features and the cached evaluator."""

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from lzn_jax.evaluators import common, fid, inception


def _random_gaussian(rng, dim, n):
    x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    return fid.feature_stats(x)


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [1, 8, 64])
def test_frechet_distance_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    a, b = _random_gaussian(rng, dim, 4 * dim + 10), _random_gaussian(rng, dim, 4 * dim + 10)
    assert fid.frechet_distance(*a, *b) == pytest.approx(_scipy_frechet(*a, *b), rel=1e-8, abs=1e-8)
    assert fid.frechet_distance(*a, *b) == pytest.approx(fid.frechet_distance(*b, *a), rel=1e-10)


def test_frechet_distance_of_a_gaussian_to_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(0)
    for n in (5, 200):  # 5 samples in 64 dims: a rank-4 covariance
        mu, sigma = fid.feature_stats(rng.normal(size=(n, 64)))
        assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_distance_of_a_mean_shift_is_the_squared_shift():
    rng = np.random.default_rng(1)
    mu, sigma = _random_gaussian(rng, 16, 100)
    shift = rng.normal(size=16)
    assert fid.frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-8)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mu1"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_is_mean_and_unbiased_covariance():
    x = np.random.default_rng(2).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = fid.feature_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x.T, ddof=1), rtol=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        fid.feature_stats(x[:1])


def test_running_moments_equal_the_stacked_statistics():
    """The evaluator accumulates FID statistics batch by batch (memory D + D², not N · D): same mean and
    unbiased covariance as np.cov of all rows, whatever the batch split."""
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(103, 6)) * 3 + 10  # an offset mean: the E[xx'] - mm' form must not lose digits
    moments = fid.Moments()
    for chunk in np.array_split(rows, [1, 40, 41, 90]):
        moments.add(chunk)
    mu, sigma = moments.stats()
    expected_mu, expected_sigma = fid.feature_stats(rows)
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match=">= 2"):
        fid.Moments().stats()


# torch.randperm(10, generator=torch.Generator().manual_seed(s)).tolist() on CPU, as PyTorch prints it (the
# official sampler's order of a split); seeds wrap at 32 bits there.
TORCH_RANDPERM_10 = {
    0: [4, 1, 7, 5, 3, 9, 0, 8, 6, 2],
    1: [5, 6, 1, 2, 0, 8, 9, 3, 7, 4],
    42: [2, 6, 1, 8, 4, 5, 0, 9, 3, 7],
    (1 << 32) + 1: [5, 6, 1, 2, 0, 8, 9, 3, 7, 4],
}


@pytest.mark.parametrize("seed", sorted(TORCH_RANDPERM_10))
def test_torch_randperm_reproduces_pytorch(seed):
    assert common.torch_randperm(10, seed).tolist() == TORCH_RANDPERM_10[seed]


def test_torch_randperm_prefix_is_the_head_of_the_full_permutation():
    full = common.torch_randperm(5000, 0)
    assert sorted(full.tolist()) == list(range(5000))
    assert common.torch_randperm(5000, 0, 1024).tolist() == full[:1024].tolist()
    assert common.torch_randperm(1, 0).tolist() == [0] and common.torch_randperm(5000, 0, 0).size == 0


def test_clean_resize_is_per_channel_float_pil_bicubic():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    out = fid.clean_resize(images)
    assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
    plane = Image.fromarray(images[1, :, :, 2].astype(np.float32)).resize((299, 299), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(out[1, :, :, 2], np.clip(np.asarray(plane), 0, 255))
    assert 0 <= out.min() and out.max() <= 255  # bicubic overshoots; clipped back
    same_size = rng.integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fid.clean_resize(same_size), same_size.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        fid.clean_resize(images.astype(np.float32))


def test_tf_bilinear_matrix_interpolates_between_neighbours():
    m = fid.tf_bilinear_matrix(4, 8)  # source positions 0, .5, 1, ..., 3.5
    np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(m[1], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(m[7], [0, 0, 0, 1.0])  # 3.5 clamps to the last pixel
    np.testing.assert_allclose(fid.tf_bilinear_matrix(5, 5), np.eye(5))


@pytest.mark.parametrize("size", [7, 32])
def test_rf_resize_matches_tf1_resize_bilinear(size):
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(size).uniform(-1, 1, (2, size, size + 3, 3)).astype(np.float32)
    expected = tf.compat.v1.image.resize_bilinear(x, [299, 299], align_corners=False, half_pixel_centers=False)
    np.testing.assert_allclose(np.asarray(fid.rf_resize(x)), expected.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random_inception.npz"
    np.savez(path, **inception.state_dict_from_variables(inception.init_inception_variables(0)))
    return str(path)


@pytest.fixture(scope="module")
def extractor(weights_file):
    return fid.InceptionFeatures(inception.load_inception_params(weights_file), batch_size=2)


@pytest.mark.slow  # 19 s cold on 2 cores (fast-tier budget)
def test_features_replicate_grey_and_do_not_depend_on_batch_padding(extractor):
    rng = np.random.default_rng(4)
    grey = rng.uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
    feats = extractor(grey, fid.CLEAN)  # chunks of 2: the last one padded
    assert feats.shape == (3, inception.FEATURE_DIM)
    np.testing.assert_allclose(extractor(np.repeat(grey, 3, -1)[2:], fid.CLEAN), feats[2:], rtol=1e-5, atol=1e-5)
    rf = extractor(grey[:2], fid.RF)
    assert not np.allclose(rf, feats[:2], rtol=1e-3)  # the pipelines resize and scale differently
    with pytest.raises(ValueError, match="pipeline"):
        extractor(grey, "legacy")


def _batches(images, batch_size):
    """Eval-iterator style batches: the last one zero-padded with a mask."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        mask = np.zeros(batch_size, bool)
        mask[: len(chunk)] = True
        padded = np.zeros((batch_size, *images.shape[1:]), images.dtype)
        padded[: len(chunk)] = chunk
        yield {"image": padded, "label": np.zeros(batch_size, np.int32), "mask": mask}


@pytest.mark.slow  # 69 s cold on 2 cores (fast-tier budget)
def test_fid_evaluator_caches_reference_stats_and_scores_identical_samples_near_zero(weights_file, tmp_path):
    rng = np.random.default_rng(5)
    reference = rng.uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    calls = []

    def replay_reference(params, key, num):  # "samples" = the reference images, in order
        start = num * len(calls)
        calls.append(key)
        out = np.zeros((num, 8, 8, 3), np.float32)
        chunk = reference[start : start + num]
        out[: len(chunk)] = chunk
        return out

    kwargs = dict(
        inception_weights=weights_file, cache_dir=str(tmp_path / "work"), dataset="toy/set", split="train",
        image_size=8, num_samples=5, batch_size=2, pipelines=("clean", "rf"),
    )
    evaluator = fid.FIDEvaluator(replay_reference, lambda: _batches(reference, 2), **kwargs)
    results = dict(evaluator.run(params=None))
    assert set(results) == {"eval/fid_clean", "eval/fid_rf"}
    for name, value in results.items():
        assert abs(value) < 1e-3, name  # features of identical images: FID(x, x) = 0 up to float32 noise
    assert len(calls) == 3  # ceil(5 / 2) sampling calls
    for pipeline in fid.PIPELINES:
        path = evaluator.cache_path(pipeline)
        assert path.endswith(f"fid_stats_toy-set_train_{pipeline}_8px_all.npz")
        with np.load(path) as cached:
            assert int(cached["num_samples"]) == 5 and cached["sigma"].shape == (2048, 2048)

    def no_reference_pass():
        raise AssertionError("the cached reference statistics should have been reused")

    noise = lambda params, key, num: np.asarray(rng.uniform(-1, 1, (num, 8, 8, 3)), np.float32)
    rerun = fid.FIDEvaluator(noise, no_reference_pass, **{**kwargs, "pipelines": ("rf",)})
    scores = dict(rerun.run(params=None))
    assert list(scores) == ["eval/fid_rf"] and scores["eval/fid_rf"] > 1e-2  # other images: a positive distance


def test_fid_evaluator_checks_its_arguments(weights_file, tmp_path):
    kwargs = dict(
        inception_weights=weights_file, cache_dir=str(tmp_path), dataset="toy", split="train", image_size=8,
        num_samples=4, batch_size=2,
    )
    with pytest.raises(ValueError, match="pipelines"):
        fid.FIDEvaluator(None, None, pipelines=("legacy_tensorflow",), **kwargs)
    wrong_size = fid.FIDEvaluator(None, lambda: _batches(np.zeros((4, 6, 6, 3), np.float32), 2), **kwargs)
    with pytest.raises(ValueError, match="image_size=8"):
        wrong_size.reference_stats()
    too_few = fid.FIDEvaluator(
        None, lambda: _batches(np.zeros((3, 8, 8, 3), np.float32), 2), num_reference_samples=4, **kwargs
    )
    with pytest.raises(ValueError, match="fewer than num_reference_samples=4"):
        too_few.reference_stats()
