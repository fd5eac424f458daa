"""lzn_jax.data: config, the digits source and the source-independent iterator guarantees."""

import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from sklearn import datasets

from lzn_jax import data
from lzn_jax.data import base, digits


def digits_cfg(**overrides):
    cfg = data.default_config()
    cfg.update(overrides)
    return cfg


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_default_config_declares_the_data_keys_and_is_valid():
    cfg = data.default_config()
    data.validate_config(cfg)
    required = {
        "source", "name", "data_dir", "image_size", "num_channels", "num_classes", "num_views", "augmentation",
        "shuffle_buffer", "train_split", "test_split", "eval_crop_fraction",
    }
    assert required <= set(cfg.keys())
    assert (cfg.source, cfg.num_views) == ("digits", 1)
    assert data.image_shape(cfg) == (16, 16, 1)


def test_default_config_does_not_import_tensorflow():
    code = "import sys, lzn_jax.data as d; d.default_config(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(source="mnist_csv"), "data.source='mnist_csv'"),
        (dict(num_views=3), "data.num_views=3"),
        (dict(image_size=0), "data.image_size=0"),
        (dict(image_size=-16), "data.image_size=-16"),
        (dict(num_channels=2), "data.num_channels=2"),
        (dict(augmentation="autoaugment"), "data.augmentation='autoaugment'"),
        (dict(eval_crop_fraction=1.5), "data.eval_crop_fraction"),
        (dict(crop_scale_min=0.9, crop_scale_max=0.5), "data.crop_scale_min=0.9"),
        (dict(jitter_prob=1.2), "data.jitter_prob"),
        (dict(train_split="validation"), "data.train_split='validation'"),
        (dict(num_classes=7), "data.num_classes=7"),
    ],
)
def test_bad_config_values_fail_at_call_naming_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        data.train_iterator(digits_cfg(**overrides), batch_size=8, seed=0)  # no next(): fails at the call


def test_missing_and_unknown_config_keys_are_reported():
    cfg = digits_cfg()
    del cfg["shuffle_buffer"]
    with pytest.raises(ValueError, match="lacks.*shuffle_buffer"):
        data.validate_config(cfg)
    cfg = digits_cfg()
    cfg.image_sise = 16
    with pytest.raises(ValueError, match="unknown keys.*image_sise"):
        data.validate_config(cfg)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=9, process_count=2), "divisible by process_count=2"),
        (dict(batch_size=8, process_index=2, process_count=2), "process_index=2"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=2048), "batch_size=2048 exceeds the 1437 train examples"),
        (dict(batch_size=8, seed=-1), "seed=-1"),
        (dict(batch_size=8, start_step=-3), "start_step=-3"),
    ],
)
def test_bad_iterator_arguments_fail_at_call(kwargs, match):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.train_iterator(digits_cfg(), **kwargs)


def test_eval_rejects_source_split_names():
    with pytest.raises(ValueError, match="split='validation'"):
        data.eval_iterator(digits_cfg(), split="validation", batch_size=8)


def test_digits_split_is_fixed_stratified_and_disjoint():
    labels = datasets.load_digits().target
    split = digits.split_indices(0.2)
    assert (len(split["train"]), len(split["test"])) == (1437, 360)
    assert (data.num_examples(digits_cfg(), "train"), data.num_examples(digits_cfg(), "test")) == (1437, 360)
    assert not set(split["train"]) & set(split["test"])
    np.testing.assert_array_equal(np.sort(np.concatenate([split["train"], split["test"]])), np.arange(len(labels)))
    for k in range(10):
        assert abs(np.sum(labels[split["test"]] == k) - 0.2 * np.sum(labels == k)) <= 1
    again = digits.split_indices.__wrapped__(0.2)  # recomputed, not the cached arrays
    for name in ("train", "test"):
        np.testing.assert_array_equal(again[name], split[name])


def test_eval_images_are_the_digits_scaled_to_minus_one_one():
    images, labels = data.load_arrays(digits_cfg(image_size=8), "test")
    raw = datasets.load_digits()
    test = digits.split_indices(0.2)["test"]
    np.testing.assert_allclose(images[..., 0], raw.images[test] / 16.0 * 2.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(labels, raw.target[test])
    assert images.dtype == np.float32 and labels.dtype == np.int32


@pytest.mark.parametrize("image_size", [16, 32])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_train_batches_have_the_configured_shape_and_range(image_size, num_channels):
    cfg = digits_cfg(image_size=image_size, num_channels=num_channels, augmentation="affine")
    batch = next(data.train_iterator(cfg, batch_size=32, seed=0))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (32, image_size, image_size, num_channels)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert batch["image"].min() == -1.0 and 0.9 < batch["image"].max() <= 1.0  # background -1, full ink ~1
    assert set(batch["label"]) <= set(range(10)) and len(set(batch["label"])) > 3
    if num_channels == 3:  # grayscale replicated
        np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])


def test_two_views_are_different_augmentations_of_the_same_example():
    batch = next(data.train_iterator(digits_cfg(num_views=2, augmentation="affine"), batch_size=32, seed=0))
    assert batch["image2"].shape == batch["image"].shape
    per_example_change = np.abs(batch["image"] - batch["image2"]).mean(axis=(1, 2, 3))
    assert np.all(per_example_change > 0.01)
    plain = next(data.train_iterator(digits_cfg(num_views=2), batch_size=32, seed=0))
    np.testing.assert_array_equal(plain["image"], plain["image2"])  # without augmentation the views coincide
    np.testing.assert_array_equal(plain["label"], batch["label"])  # same examples: the order does not depend on views


def test_the_autotuner_changes_no_batch():
    """`data.autotune` picks how tf.data runs (tuned parallelism and prefetch, or one map call per core and 2
    batches ahead), never what it yields: a pipeline whose parallel map gave up the record order, or whose
    augmentation seeds depended on which call ran first, would differ here. Off by default: closing a live
    iterator waited for the tuning thread (experiments/bench_input.py)."""
    cfg = digits_cfg(num_views=2, augmentation="affine")
    assert cfg.autotune is False
    want_train = take(data.train_iterator(cfg, batch_size=64, seed=5), 3)
    want_eval = list(data.eval_iterator(cfg, split="test", batch_size=100))
    cfg.autotune = True
    assert_batches_equal(take(data.train_iterator(cfg, batch_size=64, seed=5), 3), want_train)
    assert_batches_equal(list(data.eval_iterator(cfg, split="test", batch_size=100)), want_eval)
    from_dict = ml_collections.ConfigDict({**cfg.to_dict(), "autotune": "yes"})  # (assigning it would raise)
    with pytest.raises(ValueError, match="data.autotune='yes'"):
        data.train_iterator(from_dict, batch_size=8, seed=0)


@pytest.mark.slow  # 9 s cold on 2 cores (fast-tier budget)
def test_resume_at_any_step_yields_the_uninterrupted_batches():
    cfg = digits_cfg(num_views=2, augmentation="affine")
    assert data.steps_per_epoch(cfg, batch_size=256) == 5
    full = take(data.train_iterator(cfg, batch_size=256, seed=3), 12)  # epochs 0, 1 and part of 2
    for start in (1, 5, 7, 11):
        resumed = take(data.train_iterator(cfg, batch_size=256, seed=3, start_step=start), 12 - start)
        assert_batches_equal(resumed, full[start:])
    assert not np.array_equal(full[0]["label"], full[5]["label"])  # each epoch has its own shuffle
    other_seed = next(data.train_iterator(cfg, batch_size=256, seed=4))
    assert not np.array_equal(other_seed["label"], full[0]["label"])


def test_epoch_order_is_a_partial_permutation_with_host_blocks():
    one_host = base.epoch_order(1437, seed=0, epoch=2, local_batch=64, process_count=1)
    two_hosts = base.epoch_order(1437, seed=0, epoch=2, local_batch=32, process_count=2)
    assert one_host.shape == (22, 1, 64) and two_hosts.shape == (22, 2, 32)
    assert len(np.unique(one_host)) == 22 * 64 and one_host.min() >= 0 and one_host.max() < 1437
    np.testing.assert_array_equal(two_hosts.reshape(22, 64), one_host.reshape(22, 64))
    assert not set(two_hosts[:, 0].ravel()) & set(two_hosts[:, 1].ravel())
    next_epoch = base.epoch_order(1437, seed=0, epoch=3, local_batch=64, process_count=1)
    assert not np.array_equal(next_epoch, one_host)


def test_hosts_get_disjoint_halves_of_the_global_batch():
    cfg = digits_cfg(augmentation="affine")
    whole = take(data.train_iterator(cfg, batch_size=64, seed=1, start_step=20), 4)  # crosses the epoch end (22)
    halves = [
        take(data.train_iterator(cfg, batch_size=64, seed=1, start_step=20, process_index=i, process_count=2), 4)
        for i in range(2)
    ]
    for step, batch in enumerate(whole):
        first, second = halves[0][step], halves[1][step]
        assert first["image"].shape[0] == 32
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])
        assert not np.array_equal(first["image"], second["image"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_is_one_padded_pass_with_a_mask(process_count):
    cfg = digits_cfg()
    images, labels = data.load_arrays(cfg, "test")
    real_images, real_labels = [], []
    for index in range(process_count):
        batches = list(
            data.eval_iterator(cfg, split="test", batch_size=128, process_index=index, process_count=process_count)
        )
        local = 128 // process_count
        assert len(batches) == {1: 3, 2: 3}[process_count]  # ceil(360 / 128); ceil(180 / 64)
        masks = np.concatenate([b["mask"] for b in batches])
        assert masks.dtype == bool and masks.sum() == 360 // process_count
        assert masks[: masks.sum()].all()  # real examples first, padding last
        last = batches[-1]
        assert last["image"].shape == (local, 16, 16, 1)
        assert np.all(last["image"][~last["mask"]] == 0) and np.all(last["label"][~last["mask"]] == 0)
        real_images += [b["image"][b["mask"]] for b in batches]
        real_labels += [b["label"][b["mask"]] for b in batches]
    np.testing.assert_array_equal(np.concatenate(real_images), images)
    np.testing.assert_array_equal(np.concatenate(real_labels), labels)


def test_unconditional_training_zeroes_the_labels():
    batch = next(data.train_iterator(digits_cfg(num_classes=1), batch_size=32, seed=0))
    assert np.all(batch["label"] == 0)
    assert data.num_classes(digits_cfg(num_classes=1)) == 1 and data.num_classes(digits_cfg()) == 10
