"""The TFDS source on cifar10 and imagenet2012 under `tfds.testing.mock_data`: real code paths, no downloads.

The mock serves random examples (ImageNet ones of random sizes) for any split, so the metadata written here gives
every split the mock's example count; `is_prepared`, split lookup and feature specs are TFDS's own.
"""


import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

import support
from lzn_jax import data

NUM_EXAMPLES = 40


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """A TFDS data dir holding only the metadata (dataset_info.json, features.json) of the two datasets."""
    datasets = (("cifar10", "test"), ("imagenet2012", "validation"))
    return support.prepare_tfds_metadata(tmp_path_factory.mktemp("tfds"), datasets, NUM_EXAMPLES)


@pytest.fixture
def mocked(prepared_dir):
    with tfds.testing.mock_data(
        num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=prepared_dir
    ):
        yield prepared_dir


def cifar_cfg(data_dir, **overrides):
    cfg = data.default_config()
    cfg.update(source="tfds", name="cifar10", data_dir=data_dir, image_size=32, num_channels=3, augmentation="flip")
    cfg.update(overrides)
    return cfg


def imagenet_cfg(data_dir, **overrides):
    cfg = data.default_config()
    cfg.update(
        source="tfds", name="imagenet2012", data_dir=data_dir, test_split="validation", image_size=32,
        num_channels=3, num_classes=1000, augmentation="simclr", num_views=2, eval_crop_fraction=0.875,
        shuffle_buffer=16,
    )
    cfg.update(overrides)
    return cfg


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_cifar10_train_batches(mocked):
    cfg = cifar_cfg(mocked)
    assert data.num_examples(cfg, "train") == NUM_EXAMPLES and data.num_classes(cfg) == 10
    batch = next(data.train_iterator(cfg, batch_size=16, seed=0))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
    assert -1.0 <= batch["image"].min() < -0.9 and 0.9 < batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32 and batch["label"].min() >= 0 and batch["label"].max() < 10
    gray = next(data.train_iterator(cifar_cfg(mocked, num_channels=1), batch_size=16, seed=0))
    assert gray["image"].shape == (16, 32, 32, 1)


def test_cifar10_resume_across_epochs_matches_the_uninterrupted_run(mocked):
    cfg = cifar_cfg(mocked)
    full = take(data.train_iterator(cfg, batch_size=16, seed=5), 5)  # 2 steps per epoch: epochs 0, 1, 2
    for start in (1, 2, 3):
        resumed = take(data.train_iterator(cfg, batch_size=16, seed=5, start_step=start), 5 - start)
        for got, want in zip(resumed, full[start:]):
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
    assert not np.array_equal(full[0]["label"], full[2]["label"])  # epochs are shuffled differently


def test_cifar10_eval_is_the_unaugmented_split_padded(mocked):
    cfg = cifar_cfg(mocked)
    batches = list(data.eval_iterator(cfg, split="test", batch_size=16))
    assert [int(b["mask"].sum()) for b in batches] == [16, 16, 8]
    raw = tfds.builder("cifar10", data_dir=mocked).as_dataset(split="test")
    raw_images = np.stack([ex["image"] for ex in tfds.as_numpy(raw)])
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    np.testing.assert_allclose(images, raw_images / 255.0 * 2.0 - 1.0, atol=1e-6)


def test_cifar10_two_hosts_get_half_batches(mocked):
    # Host disjointness needs real sub-splits, which the mock ignores: it is tested on digits and image folders.
    cfg = cifar_cfg(mocked)
    for index in range(2):
        batch = next(data.train_iterator(cfg, batch_size=16, seed=0, process_index=index, process_count=2))
        assert batch["image"].shape == (8, 32, 32, 3)


def test_imagenet_simclr_gives_two_different_views(mocked):
    cfg = imagenet_cfg(mocked)
    it = data.train_iterator(cfg, batch_size=8, seed=1)
    batch = next(it)
    assert set(batch) == {"image", "image2", "label"}
    assert batch["image"].shape == batch["image2"].shape == (8, 32, 32, 3)
    assert batch["label"].max() < 1000
    assert np.all(np.abs(batch["image"] - batch["image2"]).mean(axis=(1, 2, 3)) > 0.01)
    again = next(data.train_iterator(cfg, batch_size=8, seed=1))
    np.testing.assert_array_equal(again["image2"], batch["image2"])


def test_imagenet_eval_center_crops_variable_sized_images(mocked):
    batches = list(data.eval_iterator(imagenet_cfg(mocked), split="test", batch_size=16))
    assert len(batches) == 3 and batches[0]["image"].shape == (16, 32, 32, 3)
    assert int(sum(b["mask"].sum() for b in batches)) == NUM_EXAMPLES


def test_wrong_num_classes_and_split_are_reported(mocked):
    with pytest.raises(ValueError, match="has 1000 classes"):
        data.train_iterator(imagenet_cfg(mocked, num_classes=10), batch_size=8, seed=0)
    with pytest.raises(ValueError, match="data.test_split='validation' is not a split of cifar10"):
        data.eval_iterator(cifar_cfg(mocked, test_split="validation"), split="test", batch_size=8)
    # "a+b" gave hosts uneven shares (tfds.even_splits divides each part): examples dropped, a two-process
    # evaluation hung on one host's extra batch.
    with pytest.raises(ValueError, match=r"data.train_split='train\+test': splits joined with '\+' are not supported"):
        data.train_iterator(cifar_cfg(mocked, train_split="train+test"), batch_size=8, seed=0)


def test_unprepared_cifar10_says_how_to_build_it(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
        data.train_iterator(cifar_cfg(str(tmp_path)), batch_size=8, seed=0)
    # The error is the first thing a user reads, not TFDS's "Variant folder ... has no dataset_info.json".
    assert "dataset_info.json" not in caplog.text


def test_unprepared_imagenet_says_where_the_manual_download_goes(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.eval_iterator(imagenet_cfg(str(tmp_path)), split="test", batch_size=8)
    message = str(error.value)
    assert f"{tmp_path}/downloads/manual" in message and "ILSVRC2012_img_train.tar" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message


def test_unknown_tfds_name_is_reported(tmp_path):
    with pytest.raises(ValueError, match="data.name='cifar11' is not a TFDS dataset"):
        data.num_examples(cifar_cfg(str(tmp_path), name="cifar11"), "train")


class LznTinyIds(tfds.core.GeneratorBasedBuilder):
    """A real (locally generated) TFDS dataset whose 8x8 images carry their example id in pixel (0, 0)."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # TFDS looks for metadata files beside the builder's package

    def _info(self):
        features = {"image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples(0, 64), "test": self._generate_examples(64, 10)}

    def _generate_examples(self, first_id, count):
        for example_id in range(first_id, first_id + count):
            image = np.zeros((8, 8, 1), np.uint8)
            image[0, 0, 0] = example_id
            yield example_id, {"image": image, "label": example_id % 10}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    LznTinyIds(data_dir=root).download_and_prepare()
    return root


def batch_ids(batch, key="image"):
    """Example ids of a batch of tiny images (augmentation "none", 8x8, 1 channel)."""
    return np.rint((batch[key][:, 0, 0, 0] + 1.0) / 2.0 * 255.0).astype(int)


def tiny_cfg(data_dir):
    cfg = data.default_config()
    cfg.update(source="tfds", name="lzn_tiny_ids", data_dir=data_dir, image_size=8, shuffle_buffer=8)
    return cfg


def test_prepared_dataset_hosts_read_disjoint_shares_of_every_epoch(tiny_dir):
    cfg = tiny_cfg(tiny_dir)
    per_host = [
        take(data.train_iterator(cfg, batch_size=16, seed=2, process_index=i, process_count=2), 8) for i in range(2)
    ]
    for epoch in range(2):  # 4 steps of 2 x 8 examples: each epoch visits all 64 examples once
        ids = [np.concatenate([batch_ids(b) for b in host[4 * epoch : 4 * epoch + 4]]) for host in per_host]
        assert not set(ids[0]) & set(ids[1])
        assert sorted(np.concatenate(ids)) == list(range(64))
    for host in per_host:
        for batch in host:
            np.testing.assert_array_equal(batch["label"], batch_ids(batch) % 10)
    first_epoch_order = np.concatenate([batch_ids(b) for b in per_host[0][:4]])
    second_epoch_order = np.concatenate([batch_ids(b) for b in per_host[0][4:]])
    assert not np.array_equal(first_epoch_order, second_epoch_order)


def test_prepared_dataset_resume_matches_on_real_files(tiny_dir):
    cfg = tiny_cfg(tiny_dir)
    full = take(data.train_iterator(cfg, batch_size=16, seed=2, process_index=1, process_count=2), 9)
    resumed = take(data.train_iterator(cfg, batch_size=16, seed=2, start_step=6, process_index=1, process_count=2), 3)
    for got, want in zip(resumed, full[6:]):
        np.testing.assert_array_equal(batch_ids(got), batch_ids(want))


def test_prepared_dataset_eval_hosts_cover_the_split_once(tiny_dir):
    cfg = tiny_cfg(tiny_dir)
    seen = []
    for index in range(2):
        batches = list(data.eval_iterator(cfg, split="test", batch_size=8, process_index=index, process_count=2))
        assert len(batches) == 2 and all(b["image"].shape == (4, 8, 8, 1) for b in batches)
        seen += [batch_ids(b)[b["mask"]] for b in batches]
    assert sorted(np.concatenate(seen)) == list(range(64, 74))


def test_an_eval_split_smaller_than_the_process_count_leaves_the_last_hosts_only_padding(tiny_dir):
    """`tfds.even_splits` gives a host an empty share when the split has fewer examples than processes, and reading
    it failed ("Instruction [] corresponds to no data"): a multi-host run stopped at its first evaluation."""
    cfg = tiny_cfg(tiny_dir)
    cfg.test_split = "test[:3]"
    (one_host,) = data.eval_iterator(cfg, split="test", batch_size=8)
    seen = []
    for index in range(4):
        batches = list(data.eval_iterator(cfg, split="test", batch_size=8, process_index=index, process_count=4))
        assert len(batches) == 1 and batches[0]["image"].shape == (2, 8, 8, 1)
        seen.append(batch_ids(batches[0])[batches[0]["mask"]])
    assert [len(ids) for ids in seen] == [1, 1, 1, 0]
    np.testing.assert_array_equal(np.concatenate(seen), batch_ids(one_host)[one_host["mask"]])  # the split's order
