"""FID math against scipy, the two resizing pipelines, features and the cached evaluator."""

import os
import re
import shutil

import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from lzn_jax import data, parallel
from lzn_jax.data import image_folder
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


@pytest.mark.parametrize("count", [4, 6, 103])  # fewer rows than D = 6 (rows kept), exactly D, more (sums kept)
def test_moments_factor_reproduces_the_covariance(count):
    """`Moments.factor()` gives F with Fᵀ F = the covariance whichever form the moments are kept in (the centred
    rows up to D rows, the sums past them). Bug this catches: a switch from rows to sums that drops or repeats
    the batch that crosses D rows."""
    rows = np.random.default_rng(count).normal(size=(count, 6)) * 3 + 10
    moments = fid.Moments()
    for chunk in np.array_split(rows, [1, 3, 5, 40]):
        moments.add(chunk)
    mean, factor, trace = moments.factor()
    expected_mu, expected_sigma = fid.feature_stats(rows)
    assert factor.shape == (count, 6) if count <= 6 else (6, 6)
    np.testing.assert_allclose(mean, expected_mu, rtol=1e-12)
    np.testing.assert_allclose(factor.T @ factor, expected_sigma, rtol=1e-9, atol=1e-10)
    assert trace == pytest.approx(np.trace(expected_sigma), rel=1e-12)
    np.testing.assert_allclose(moments.stats()[1], expected_sigma, rtol=1e-9, atol=1e-12)


def _gram_frechet(samples, mu2, sigma2):
    """FID of sample rows [N, D] against (mu2, sigma2), N < D, through the N × N Gram matrix A S2 Aᵀ of the
    centred rows A / √(N − 1): it has the nonzero spectrum of S1 S2 (an independent route to the same number)."""
    centred = (samples - samples.mean(0)) / np.sqrt(len(samples) - 1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(centred @ sigma2 @ centred.T), 0, None)).sum()
    diff = samples.mean(0) - mu2
    return diff @ diff + np.sum(centred**2) + np.trace(sigma2) - 2 * trace_sqrt


@pytest.mark.parametrize("count", [5, 40, 300])  # in 64 dims: singular and full-rank sample covariances
def test_fid_from_the_samples_factor(count):
    """The evaluator scores samples from their `Moments.factor()` and the reference covariance's root. Full rank:
    the same distance as `frechet_distance` (checked against scipy's sqrtm above). Fewer samples than
    dimensions: the distance through the N × N Gram matrix, and 0 for samples scored against their own
    statistics."""
    rng = np.random.default_rng(count)
    samples = rng.normal(size=(count, 64)) @ rng.normal(size=(64, 64))
    mu2, sigma2 = _random_gaussian(rng, 64, 500)
    moments = fid.Moments()
    for chunk in np.array_split(samples, 3):
        moments.add(chunk)
    mu1, sigma1 = fid.feature_stats(samples)
    from_factor = fid.frechet_from_factor(*moments.factor(), mu2, fid.psd_sqrt(sigma2), np.trace(sigma2))
    if count < 64:
        assert from_factor == pytest.approx(_gram_frechet(samples, mu2, sigma2), rel=1e-8)
    else:
        assert from_factor == pytest.approx(fid.frechet_distance(mu1, sigma1, mu2, sigma2), rel=1e-9)
    itself = fid.frechet_from_factor(*moments.factor(), mu1, fid.psd_sqrt(sigma1), np.trace(sigma1))
    assert abs(itself) < 1e-9 * np.trace(sigma1)


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


def _image_folder(root, count=5, size=8):
    """`count` random RGB PNGs of size x size in root/train, and the data config that reads them (the
    image_folder source, as the 256 px paper configs read theirs)."""
    rng = np.random.default_rng(5)
    os.makedirs(root / "train")
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "train" / f"img_{i}.png")
    cfg = data.default_config()
    cfg.update(source="image_folder", name="toy/set", data_dir=str(root), train_split="train", test_split="train",
               image_size=size, num_channels=3, num_classes=1)  # fmt: skip
    return cfg


class ReplaySamples:
    """A `sample_fn` (predict.SampleFn's signature) whose "samples" are given images, in order, batch after batch."""

    num_classes = 1

    def __init__(self, images):
        self.images, self.keys = images, []

    def __call__(self, params, key, labels, sampler):
        start = len(labels) * len(self.keys)
        self.keys.append(key)
        out = np.zeros((len(labels), *self.images.shape[1:]), np.float32)
        chunk = self.images[start : start + len(labels)]
        out[: len(chunk)] = chunk
        return out


@pytest.mark.slow  # 69 s cold on 2 cores (fast-tier budget)
def test_fid_caches_reference_stats_and_scores_identical_samples_near_zero(weights_file, tmp_path, monkeypatch):
    """The evaluator takes its sampling function (big_vision's predict_fn): here one that replays the reference
    split itself, read through the real image-folder pipeline. Bug this also catches: the reference covariance's
    square root recomputed for every score (two 2048² eigendecompositions and a 2048² SVD per score made FID
    most of a paper config's evaluation time on CPU)."""
    data_cfg = _image_folder(tmp_path / "images")
    reference, _ = data.load_arrays(data_cfg, "train")
    replay = ReplaySamples(reference)
    kwargs = dict(data_cfg=data_cfg, mesh=parallel.make_mesh(-1), workdir=str(tmp_path / "work"), eval_batch_size=2,
                  inception_weights=weights_file, samplers=("euler",), num_samples=5, pipelines=("clean", "rf"))  # fmt: skip
    evaluator = fid.FID(sample_fn=replay, **kwargs)
    results = dict(evaluator.run(params=None, step=0))
    assert set(results) == {"eval/fid_clean_euler", "eval/fid_rf_euler"}
    for name, value in results.items():
        assert abs(value) < 1e-3, name  # features of identical images: FID(x, x) = 0 up to float32 noise
    assert len(replay.keys) == 3  # ceil(5 / 2) sampling calls
    for pipeline in fid.PIPELINES:
        path = evaluator.cache_path(pipeline)
        assert re.fullmatch(rf"fid_stats_toy-set_train_{pipeline}_8px_all_[0-9a-f]{{10}}\.npz", os.path.basename(path))
        with np.load(path) as cached:
            assert int(cached["num_samples"]) == 5 and cached["sigma"].shape == (2048, 2048)

    rng = np.random.default_rng(6)
    noise = rng.uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
    rerun = fid.FID(sample_fn=ReplaySamples(noise), **{**kwargs, "pipelines": ("rf",)})
    rerun._reference_batches = lambda: pytest.fail("the cached reference statistics should have been reused")
    roots, psd_sqrt = [], fid.psd_sqrt
    monkeypatch.setattr(fid, "psd_sqrt", lambda sigma: roots.append(sigma.shape) or psd_sqrt(sigma))
    scores = dict(rerun.run(params=None, step=0))
    assert list(scores) == ["eval/fid_rf_euler"] and scores["eval/fid_rf_euler"] > 1e-2  # a positive distance
    rerun.sample_fn = ReplaySamples(noise)  # a second evaluation of the same samples
    assert dict(rerun.run(params=None, step=1)) == scores
    # The reference covariance's root (a 2048² eigendecomposition) once for both evaluations; 5 samples are
    # scored from their rows, with no root of their own.
    assert roots == [(2048, 2048)]


def test_reference_statistics_are_cached_per_data_setting(weights_file, tmp_path):
    """Bug this catches: the cache was keyed by the dataset's name, split name, image size and count only, so a
    workdir pointed at other data under the same name (another data_dir, split string, channel count or eval
    crop) reused the first data's statistics and scored every later run against them."""
    data_cfg = _image_folder(tmp_path / "images", count=3)
    kwargs = dict(sample_fn=None, mesh=parallel.make_mesh(-1), workdir=str(tmp_path / "work"), eval_batch_size=2,
                  inception_weights=weights_file, num_samples=4)  # fmt: skip

    def evaluator(**changes):
        cfg = data_cfg.copy_and_resolve_references()
        cfg.update(changes)
        return fid.FID(data_cfg=cfg, **kwargs)

    shutil.copytree(tmp_path / "images", tmp_path / "other")  # the same images elsewhere, under the same name
    shutil.copytree(tmp_path / "images" / "train", tmp_path / "images" / "train2")
    base = evaluator().cache_path("clean")
    changed = [evaluator(data_dir=str(tmp_path / "other")), evaluator(train_split="train2"), evaluator(num_channels=1),
               evaluator(eval_crop_fraction=0.875), evaluator(image_key="img")]  # fmt: skip
    assert len({base, *(e.cache_path("clean") for e in changed)}) == 1 + len(changed)
    # Settings that do not change the reference split's images keep the cache.
    assert evaluator(test_split="train2", shuffle_buffer=5, augmentation="flip").cache_path("clean") == base
    # More images in the folder (statistics of a folder read while it was being copied were reused after).
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "train" / "img_late.png")
    image_folder.list_images.cache_clear()  # a later run: a new process lists the folder afresh
    assert evaluator().cache_path("clean") != base
    os.remove(tmp_path / "images" / "train" / "img_late.png")
    image_folder.list_images.cache_clear()
    first = evaluator()
    first._save_cached("clean", np.zeros(2), np.eye(2), count=3)
    assert first._load_cached("clean") is not None
    with np.load(base) as cached:  # a file under the same name holding another key (or a cache from before keys)
        np.savez(base, mu=cached["mu"], sigma=cached["sigma"], num_samples=3, key="{}")
    assert first._load_cached("clean") is None


def test_sample_labels_are_balanced_over_all_samples_not_per_batch(weights_file, tmp_path):
    """Bug: labels cycled within each batch (np.arange(batch_size) % K for every batch), so with 4 per batch and
    10 classes, classes 0-3 got three samples of ten and 4-9 one or two."""

    class Labels(ReplaySamples):
        num_classes = 10

        def __call__(self, params, key, labels, sampler):
            self.keys.append(np.asarray(labels))
            return np.zeros((len(labels), 8, 8, 3), np.float32)

    recorder = Labels(None)
    evaluator = fid.FID(sample_fn=recorder, data_cfg=_image_folder(tmp_path / "images", count=3), mesh=None,
                        workdir=str(tmp_path), eval_batch_size=4, inception_weights=weights_file,
                        num_samples=30)  # fmt: skip
    evaluator.features = lambda images, pipeline: np.zeros((len(images), 3))
    evaluator.sample_moments(params=None, sampler="euler")
    used = np.concatenate(recorder.keys)[:30]
    np.testing.assert_array_equal(np.bincount(used, minlength=10), np.full(10, 3))


def test_fid_checks_its_arguments(weights_file, tmp_path):
    data_cfg = _image_folder(tmp_path / "images", count=3)
    kwargs = dict(sample_fn=None, data_cfg=data_cfg, mesh=parallel.make_mesh(-1), workdir=str(tmp_path),
                  eval_batch_size=2, inception_weights=weights_file, num_samples=4)  # fmt: skip
    with pytest.raises(ValueError, match="pipelines"):
        fid.FID(pipelines=("legacy_tensorflow",), **kwargs)
    with pytest.raises(ValueError, match="inception_weights"):
        fid.FID(**{**kwargs, "inception_weights": ""})
    too_few = fid.FID(num_reference_samples=4, reference_shuffle_seed=None, **kwargs)
    with pytest.raises(ValueError, match="fewer than num_reference_samples=4"):
        too_few.reference_stats()


def test_fid_compile_targets_are_its_samplers_and_the_inception_network_at_its_batch(weights_file, tmp_path):
    """The scale rehearsal compiles what an FID evaluation runs: each sampler at the evaluator's batch, and the
    Inception network on `batch_size` images per pipeline (clean: resized to 299 on the host; rf: at the data's
    size). Bug this catches: a rehearsal that leaves out FID's Inception pass (on one device it was the largest
    program of a generation run's evaluation: 17.6 GiB at CIFAR-10's batch of 2000)."""

    class Sampler(ReplaySamples):
        def compile_target(self, num, sampler):
            return f"{sampler}-fn", num

    data_cfg = _image_folder(tmp_path / "images", count=3)
    evaluator = fid.FID(sample_fn=Sampler(None), data_cfg=data_cfg, mesh=parallel.make_mesh(-1), workdir=str(tmp_path),
                        eval_batch_size=2, inception_weights=weights_file, samplers=("rk45", "euler"),
                        pipelines=("clean", "rf"))  # fmt: skip
    targets = evaluator.compile_targets()
    assert set(targets) == {"rk45", "euler", "inception_clean", "inception_rf"}
    assert targets["rk45"] == ("rk45-fn", 2)
    for pipeline, size in (("clean", 299), ("rf", 8)):
        network, (variables, pixels) = targets[f"inception_{pipeline}"]  # split over the mesh's data axis
        assert pixels.shape == (2, size, size, 3)
        lowered = network.trace(None, variables, pixels).lower()  # the abstract inputs fit the network
        assert "2048" in str(lowered.out_info)  # pool_3 features [2, 2048]
