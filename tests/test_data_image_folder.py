"""The image-folder source on a temporary tree of PNG / JPEG / GIF files written here."""

import os

import numpy as np
import pytest
from PIL import Image

from lzn_jax import data
from lzn_jax.data import base, image_folder, pipeline

TRAIN_FILES = ["cat_1.png", "cat_4.gif", "cat_sub/cat_3.jpg", "dog_2.png", "dog_5.png", "dog_6.png"]


def write_image(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """train/: 6 noise images of mixed sizes, modes and formats, a nested folder and a non-image; val/: two solid."""
    base = str(tmp_path_factory.mktemp("images"))
    train = os.path.join(base, "train")
    rng = np.random.default_rng(0)
    for name, (h, w) in zip(TRAIN_FILES, [(30, 40), (24, 24), (36, 20), (24, 24), (40, 30), (20, 20)]):
        shape = (h, w) if name == "dog_2.png" else (h, w, 3)  # one grayscale file
        write_image(os.path.join(train, name), rng.integers(0, 256, shape))
    with open(os.path.join(train, "notes.txt"), "w") as f:
        f.write("not an image")
    # Hidden entries: macOS's AppleDouble metadata beside each copied image, a hidden folder of images. The bug:
    # "._cat_1.png" was listed, counted, and stopped training with a decode error when a batch first drew it.
    with open(os.path.join(train, "._cat_1.png"), "wb") as f:
        f.write(b"\x00\x05\x16\x07 AppleDouble metadata")
    write_image(os.path.join(train, ".thumbnails", "cat_9.png"), rng.integers(0, 256, (8, 8, 3)))
    write_image(os.path.join(base, "val", "cat_a.png"), np.broadcast_to([255, 0, 0], (20, 20, 3)))
    write_image(os.path.join(base, "val", "dog_b.png"), np.full((18, 12), 128))
    return base


def folder_cfg(base, **overrides):
    cfg = data.default_config()
    cfg.update(
        source="image_folder", name="pets", data_dir=base, train_split="train", test_split="val", image_size=16,
        num_channels=3, num_classes=1, augmentation="flip",
    )
    cfg.update(overrides)
    return cfg


def test_listing_is_sorted_recursive_and_skips_non_images_and_hidden_entries(root):
    listed = image_folder.list_images(os.path.join(root, "train"))
    assert [os.path.relpath(p, os.path.join(root, "train")) for p in listed] == TRAIN_FILES
    assert data.num_examples(folder_cfg(root), "train") == 6 and data.num_examples(folder_cfg(root), "test") == 2


def test_a_linked_folder_loop_lists_each_image_once(tmp_path):
    """A link to a parent folder (`a/loop -> ..`) once listed the same 6 images 246 times, through a/loop/a/loop/…"""
    for name in ("x_0.png", "a/y_0.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name)
    os.symlink("..", tmp_path / "a" / "loop")
    listed = image_folder.list_images(str(tmp_path))
    assert [os.path.relpath(p, tmp_path) for p in listed] == ["a/y_0.png", "x_0.png"]


def test_a_corrupt_image_is_named_with_the_step_that_reads_it(tmp_path):
    """TensorFlow reports a truncated file as "Invalid PNG data, size 60" with no path, and an image-folder run
    stopped there again at every resume while the user searched millions of files for it."""
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "train")
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "train" / f"img_{i:02d}.png")
    bad = tmp_path / "train" / "img_07.png"
    bad.write_bytes(bad.read_bytes()[:60])
    cfg = data.default_config()
    cfg.update(source="image_folder", name="x", data_dir=str(tmp_path), train_split="train", test_split="train",
               num_classes=1, num_channels=3, image_size=8)  # fmt: skip
    order = base.epoch_order(20, seed=0, epoch=0, local_batch=4, process_count=1)
    step = 1 + next(s for s in range(len(order)) if 7 in order[s])
    for start_step in (0, step - 1):  # from the start, and resumed just before it
        batches = data.train_iterator(cfg, batch_size=4, seed=0, start_step=start_step)
        expected = rf"Cannot decode {bad} \(Invalid PNG data, size 60\), read for train step {step}: remove or replace"
        with pytest.raises(pipeline.UnreadableExample, match=expected):
            for _ in range(len(order)):
                next(batches)
    with pytest.raises(pipeline.UnreadableExample, match=rf"{bad} .*, read for test batch 2 of 5"):
        list(data.eval_iterator(cfg, split="test", batch_size=4))


def test_labels_come_from_file_name_prefixes_when_conditional(root):
    cfg = folder_cfg(root, num_classes=2)
    assert data.num_classes(cfg) == 2
    _, labels = data.load_arrays(cfg, "train")
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])  # cat, dog in sorted order
    _, unconditional = data.load_arrays(folder_cfg(root), "train")
    np.testing.assert_array_equal(unconditional, 0)
    # The count's error says what was taken as classes: with one folder per class (AFHQ's train/cat, train/dog of
    # flickr_*/pixabay_* files) its advice alone once led to labels by photo site.
    with pytest.raises(ValueError, match=r"has 2 classes \(a file's class is its name before the first '_', not its "
                                         r"folder: 'cat', 'dog'; "):  # fmt: skip
        data.train_iterator(folder_cfg(root, num_classes=3), batch_size=2, seed=0)


def test_eval_decodes_colours_and_converts_channels(root):
    images, _ = data.load_arrays(folder_cfg(root), "test")
    assert images.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(images[0], np.broadcast_to([1.0, -1.0, -1.0], (16, 16, 3)), atol=1e-6)
    np.testing.assert_allclose(images[1], 128 / 255 * 2 - 1, atol=1e-6)  # grayscale PNG replicated to RGB
    gray, _ = data.load_arrays(folder_cfg(root, num_channels=1), "test")
    np.testing.assert_allclose(gray[0], 0.299 * 2 - 1, atol=1e-3)  # pure red -> its luma
    batch = next(data.eval_iterator(folder_cfg(root), split="test", batch_size=4))
    np.testing.assert_array_equal(batch["mask"], [True, True, False, False])


def test_train_batches_resume_and_split_across_hosts(root):
    cfg = folder_cfg(root)
    uninterrupted = data.train_iterator(cfg, batch_size=2, seed=0)
    whole = [next(uninterrupted) for _ in range(7)]  # 3 steps per epoch: crosses two epoch ends
    assert whole[0]["image"].shape == (2, 16, 16, 3)
    resumed = data.train_iterator(cfg, batch_size=2, seed=0, start_step=4)
    for want in whole[4:]:
        np.testing.assert_array_equal(next(resumed)["image"], want["image"])
    hosts = [data.train_iterator(cfg, batch_size=2, seed=0, process_index=i, process_count=2) for i in range(2)]
    for want in whole:
        halves = [next(host) for host in hosts]
        np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), want["image"])


def test_missing_or_empty_folders_fail_with_what_to_do(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*Download the images"):
        data.train_iterator(folder_cfg(str(tmp_path / "nowhere")), batch_size=2, seed=0)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("no images here")
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .jpg/.jpeg/.png/.gif files"):
        data.eval_iterator(folder_cfg(str(tmp_path)), split="test", batch_size=2)
    with pytest.raises(ValueError, match="needs data.data_dir"):
        data.num_examples(folder_cfg(""), "train")


@pytest.mark.parametrize("name", ["gen_afhq_cat", "gen_celebahq", "gen_lsun_bedroom"])
def test_the_256px_paper_configs_require_their_image_folder_before_any_network_access(name):
    """They once defaulted to gs://BUCKET/… placeholders: a first try printed Google authentication failures."""
    from support import load_config

    config = load_config(name)
    assert config.data.data_dir == ""
    with pytest.raises(ValueError, match=r"needs data.data_dir.*set --config.data.data_dir=/path/to/images"):
        data.num_examples(config.data, "train")
