"""Input pipelines: digits split, determinism and resume, hosts, views, evaluation padding, missing data."""

import numpy as np
import pytest

from lzn_jax import data
from lzn_jax.data import sources


def digits_config(**augment):
    cfg = data.default_config()
    cfg.image_size = 16
    cfg.augment.update(augment)
    return cfg


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_digits_split_is_fixed_stratified_and_scaled():
    train = sources.digits("train", 16, 1)
    test = sources.digits("test", 16, 1)
    assert len(train.labels) + len(test.labels) == 1797
    assert abs(len(test.labels) - 0.2 * 1797) < 1
    np.testing.assert_allclose(np.bincount(test.labels) / len(test.labels), np.bincount(train.labels) / len(train.labels), atol=0.01)
    images, labels = data.load_arrays(digits_config(), "test")
    assert images.shape == (len(test.labels), 16, 16, 1) and images.min() >= -1.0 and images.max() <= 1.0
    np.testing.assert_array_equal(labels, data.load_arrays(digits_config(), "test")[1])  # same split every time
    rgb_config = digits_config()
    rgb_config.num_channels = 3
    rgb, _ = data.load_arrays(rgb_config, "test")
    assert rgb.shape[-1] == 3 and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_batches_depend_only_on_seed_and_step_so_resume_is_exact():
    cfg = digits_config(crop_scale_min=0.5, max_rotate_degrees=15)
    cfg.num_views = 2
    straight = take(data.train_iterator(cfg, batch_size=128, seed=3), 14)  # 11 steps per epoch: crosses one
    resumed = take(data.train_iterator(cfg, batch_size=128, seed=3, start_step=9), 5)
    for a, b in zip(straight[9:], resumed):
        for key in ("image", "image2", "label"):
            np.testing.assert_array_equal(a[key], b[key])
    other_seed = next(data.train_iterator(cfg, batch_size=128, seed=4))
    assert not np.array_equal(other_seed["label"], straight[0]["label"])


def test_epochs_cover_the_training_set_and_reshuffle():
    cfg = digits_config()
    n = len(sources.digits("train", 16, 1).labels)
    steps = n // 100
    batches = take(data.train_iterator(cfg, batch_size=100, seed=0), 2 * steps)
    first = np.concatenate([b["image"].reshape(100, -1) for b in batches[:steps]])
    assert len(np.unique(first, axis=0)) == steps * 100  # no example twice within an epoch
    assert not np.array_equal(batches[0]["label"], batches[steps]["label"])  # a new order next epoch


def test_hosts_get_disjoint_rows_of_the_same_global_batch():
    cfg = digits_config(crop_scale_min=0.7)
    single = take(data.train_iterator(cfg, batch_size=64, seed=1), 3)
    host0 = take(data.train_iterator(cfg, batch_size=32, seed=1, process_index=0, process_count=2), 3)
    host1 = take(data.train_iterator(cfg, batch_size=32, seed=1, process_index=1, process_count=2), 3)
    for g, a, b in zip(single, host0, host1):
        np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), g["image"])


def test_two_views_are_different_augmentations_of_the_same_image():
    cfg = digits_config(crop_scale_min=0.6, max_rotate_degrees=10)
    cfg.num_views = 2
    batch = next(data.train_iterator(cfg, batch_size=64, seed=0))
    assert batch["image"].shape == batch["image2"].shape == (64, 16, 16, 1)
    assert np.abs(batch["image"] - batch["image2"]).mean() > 0.05
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    plain = next(data.train_iterator(digits_config(), batch_size=64, seed=0))
    assert "image2" not in plain


def test_eval_pass_pads_the_last_batch_and_masks_it():
    cfg = digits_config()
    n = data.num_examples(cfg, "test")
    batches = list(data.eval_iterator(cfg, split="test", batch_size=100))
    assert len(batches) == -(-n // 100)
    assert sum(int(b["mask"].sum()) for b in batches) == n
    assert not batches[-1]["mask"][-1] and np.all(batches[-1]["image"][~batches[-1]["mask"]] == 0)
    images, labels = data.load_arrays(cfg, "test")
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), labels)
    shares = [list(data.eval_iterator(cfg, split="test", batch_size=64, process_index=p, process_count=2)) for p in (0, 1)]
    assert len(shares[0]) == len(shares[1])  # hosts step through the same number of batches
    assert sum(int(b["mask"].sum()) for share in shares for b in share) == n


def test_bad_config_and_missing_data_fail_with_what_to_do(tmp_path):
    cfg = data.default_config()
    cfg.source = "csv"
    with pytest.raises(ValueError, match="data.source='csv'"):
        data.check(cfg)
    cfg = data.default_config()
    cfg.num_views = 3
    with pytest.raises(ValueError, match="num_views"):
        data.check(cfg)
    cfg = data.default_config()
    cfg.source, cfg.data_dir = "image_folder", str(tmp_path / "afhq")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.check_available(cfg)
    (tmp_path / "empty").mkdir()
    cfg.data_dir = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        data.check_available(cfg)
    cfg = data.default_config()
    cfg.source, cfg.name, cfg.data_dir = "tfds", "imagenet2012", str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="downloads/manual"):
        data.check_available(cfg)


def test_tfds_cifar10_in_memory_and_streaming_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=40):
        cfg = data.default_config()
        cfg.update(dict(source="tfds", name="cifar10", image_size=32, num_channels=3))
        cfg.augment.flip = True
        data.check_available(cfg)
        for in_memory in (True, False):
            cfg.in_memory = in_memory
            first = take(data.train_iterator(cfg, batch_size=8, seed=0), 6)  # 5 steps per epoch
            again = take(data.train_iterator(cfg, batch_size=8, seed=0, start_step=4), 2)
            assert first[0]["image"].shape == (8, 32, 32, 3)
            assert first[0]["image"].min() >= -1 and first[0]["image"].max() <= 1
            for a, b in zip(first[4:], again):
                np.testing.assert_array_equal(a["image"], b["image"])
            batches = list(data.eval_iterator(cfg, split="test", batch_size=16))
            assert sum(int(b["mask"].sum()) for b in batches) == 40


def test_tfds_imagenet_two_simclr_views_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        cfg = data.default_config()
        cfg.update(dict(source="tfds", name="imagenet2012", image_size=48, num_channels=3, num_views=2,
                        test_split="validation", eval_resize_ratio=256 / 224))  # fmt: skip
        cfg.augment.update(dict(crop_scale_min=0.08, flip=True, color_jitter=0.8, hue=0.2, grayscale_prob=0.2,
                                blur_prob=1.0))  # fmt: skip
        batch = next(data.train_iterator(cfg, batch_size=4, seed=0))
        assert batch["image"].shape == batch["image2"].shape == (4, 48, 48, 3)
        assert np.abs(batch["image"] - batch["image2"]).mean() > 0.01
        evals = list(data.eval_iterator(cfg, split="validation", batch_size=8))
        assert evals[0]["image"].shape == (8, 48, 48, 3) and sum(int(b["mask"].sum()) for b in evals) == 12


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 3)):
        (tmp_path / split / "cat").mkdir(parents=True)
        for i in range(count):  # non-square: resized on the shorter side, then centre-cropped
            pixels = rng.integers(0, 255, size=(40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / split / "cat" / f"{i:03d}.png")
    cfg = data.default_config()
    cfg.update(dict(source="image_folder", data_dir=str(tmp_path), image_size=16, num_channels=3, test_split="val"))
    cfg.augment.flip = True
    data.check_available(cfg)
    assert data.num_examples(cfg, "train") == 10
    batches = take(data.train_iterator(cfg, batch_size=5, seed=0), 3)
    assert batches[0]["image"].shape == (5, 16, 16, 3) and np.all(batches[0]["label"] == 0)
    np.testing.assert_array_equal(take(data.train_iterator(cfg, batch_size=5, seed=0, start_step=2), 1)[0]["image"],
                                  batches[2]["image"])  # fmt: skip
    evals = list(data.eval_iterator(cfg, split="val", batch_size=2))
    assert len(evals) == 2 and sum(int(b["mask"].sum()) for b in evals) == 3
