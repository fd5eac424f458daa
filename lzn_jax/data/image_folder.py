"""A folder of images (local or gs://), read as the official `ImageFolderDataset` reads it.

Layouts of the official datasets (set `data.data_dir` to the root and the splits to the sub-folders):
  AFHQ-Cat      train_split="train/cat", test_split="val/cat"
  CelebA-HQ     train_split="", test_split=""   (one folder; the official code evaluates on the train images)
  LSUN bedroom  train_split="bedroom_train", test_split="bedroom_val"
Files are listed recursively in sorted order; .jpg/.jpeg/.png/.gif count as images, other files are skipped.
Images are decoded to RGB. With `data.num_classes > 1` the class of `dog_0001.png` is its name before the first
"_" (the official conditional mode), numbered in sorted order of the train split's names.
"""

import functools
import os
import re

import ml_collections
import numpy as np
import tensorflow as tf

from lzn_jax.data.base import IndexedSource

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")
_SPLIT_KEYS = {"train": "train_split", "test": "test_split"}


def build(cfg: ml_collections.ConfigDict) -> "ImageFolderSource":
    return ImageFolderSource(cfg)


@functools.lru_cache(maxsize=8)
def list_images(folder: str) -> tuple[str, ...]:
    """Every image under `folder`: entries sorted by name at each level, sub-folders expanded in place, hidden
    entries (names starting with ".") left out: an undecodable "._x.png" would otherwise stop a run mid-epoch.
    A linked folder already listed (a link to a parent makes a loop) is listed once: a loop once repeated the
    same images 40 times over."""
    return tuple(_listed(folder, seen=set()))


def _listed(folder: str, *, seen: set) -> list[str]:
    real = os.path.realpath(folder) if "://" not in folder else folder  # object stores have no links
    if real in seen:
        return []
    seen.add(real)
    found = []
    for entry in sorted(tf.io.gfile.listdir(folder)):
        entry = entry.rstrip("/")  # gfile marks directories on some file systems
        if entry.startswith("."):  # hidden: macOS's "._cat_0001.png" metadata files, .ipynb_checkpoints, ...
            continue
        path = os.path.join(folder, entry)
        if "." in entry and entry.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS:
            found.append(path)
        elif tf.io.gfile.isdir(path):  # only names that are not images are checked: one call each on GCS
            found.extend(_listed(path, seen=seen))
    return found


def class_name(path: str) -> str:
    """'…/cat_0012.png' -> 'cat'."""
    return os.path.basename(path).split("_")[0]


class ImageFolderSource(IndexedSource):
    def __init__(self, cfg: ml_collections.ConfigDict):
        if not cfg.data_dir:
            raise ValueError(
                f"data.source='image_folder' needs data.data_dir, the folder that holds the {cfg.name!r} images: set "
                f"--config.data.data_dir=/path/to/images (local or gs://), with the splits in its sub-folders "
                f"data.train_split={cfg.train_split!r} and data.test_split={cfg.test_split!r} ('' = the folder itself)."
            )
        self._files = {split: np.array(_listed_folder(cfg, split)) for split in _SPLIT_KEYS}
        names = sorted({class_name(path) for path in self._files["train"]})
        self.num_classes, self._class_names = len(names), names
        self._labels = {split: np.zeros(len(files), np.int32) for split, files in self._files.items()}
        if cfg.num_classes > 1:
            self._labels = {split: _class_ids(files, names, cfg) for split, files in self._files.items()}

    def classes_note(self) -> str:
        # A folder per class (AFHQ's train/cat, train/dog) is not how classes are read: the note shows the
        # prefixes taken as classes (e.g. 'flickr', 'pixabay'), so that the advice to set their count is not
        # followed blindly.
        shown = ", ".join(repr(n) for n in self._class_names[:8]) + (", …" if len(self._class_names) > 8 else "")
        return (f" (a file's class is its name before the first '_', not its folder: {shown}; the official "
                "conditional mode)")

    def num_examples(self, split: str) -> int:
        return len(self._files[split])

    def records(self, split: str, indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(
            {"path": self._files[split][indices], "label": self._labels[split][indices]}
        )

    def decode(self, record):
        image = tf.io.decode_image(tf.io.read_file(record["path"]), channels=3, expand_animations=False)
        return tf.image.convert_image_dtype(image, tf.float32), record["label"]

    def unreadable(self, split, indices):
        found = []
        for path in self._files[split][indices]:
            try:  # the pipeline's own decoder, eagerly
                tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            except tf.errors.OpError as error:  # "{{function_node …}} Invalid PNG data, size 60 [Op:DecodeImage]"
                reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", error.message.splitlines()[0]).strip()
                found.append(f"{path} ({reason})")
        return found


def _listed_folder(cfg, split):
    key = _SPLIT_KEYS[split]
    folder = os.path.join(cfg.data_dir, cfg[key]) if cfg[key] else cfg.data_dir
    where = f"data.data_dir={cfg.data_dir!r} + data.{key}={cfg[key]!r}"
    if not tf.io.gfile.isdir(folder):
        raise FileNotFoundError(
            f"Image folder {folder!r} ({where}) does not exist. Download the images and unpack them there "
            "(AFHQ-Cat: <root>/train/cat and <root>/val/cat; CelebA-HQ: one folder; LSUN bedroom: "
            "<root>/bedroom_train and <root>/bedroom_val), or point data.data_dir / data.train_split / "
            "data.test_split at them."
        )
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(
            f"Image folder {folder!r} ({where}) holds no .{'/.'.join(IMAGE_EXTENSIONS)} files (searched "
            "recursively); put the images there or point data.data_dir at the folder that has them."
        )
    return files


def _class_ids(files, names, cfg):
    ids = {name: i for i, name in enumerate(names)}
    unknown = sorted({class_name(path) for path in files} - set(ids))
    if unknown:
        raise ValueError(
            f"Image classes {unknown} (file-name prefixes before '_') are not in the train split {cfg.train_split!r}; "
            "every class needs train images, or set data.num_classes=1 for unlabeled images."
        )
    return np.array([ids[class_name(path)] for path in files], np.int32)
