"""Any prepared TFDS image dataset (`data.name`: "cifar10", "imagenet2012", …) in `data.data_dir` (local or gs://).

Nothing is downloaded here: a dataset that is not prepared fails at start with the command that prepares it.
Each host reads its own even share of the split (`tfds.even_splits`). Train epochs shuffle the files and then
the examples through a `data.shuffle_buffer`, both seeded by (seed, epoch). Images stay encoded until after
that, so resuming mid-epoch skips records without decoding them (it still reads them: up to one epoch of bytes).
"""

import contextlib
import logging
import textwrap

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from lzn_jax.data.base import Source, epoch_seeds

_SPLIT_KEYS = {"train": "train_split", "test": "test_split"}


def build(cfg: ml_collections.ConfigDict) -> "TfdsSource":
    return TfdsSource(cfg)


def prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The builder of `name` in `data_dir` ("" = TFDS's default); raises if it is unknown or not prepared."""
    with _without_missing_info_warning():
        try:
            builder = tfds.builder(name, data_dir=data_dir or None)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"data.name={name!r} is not a TFDS dataset; see https://www.tensorflow.org/datasets/catalog."
            ) from None
        if not builder.is_prepared():
            raise FileNotFoundError(_not_prepared_message(builder, name))
    return builder


class _MissingInfoFilter(logging.Filter):
    def filter(self, record):
        return "dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _without_missing_info_warning():
    """tfds.builder warns "... has no dataset_info.json" for a dataset that is not prepared; our error says more."""
    logger, quiet = logging.getLogger("absl"), _MissingInfoFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class TfdsSource(Source):
    def __init__(self, cfg: ml_collections.ConfigDict):
        self._cfg = cfg
        self._builder = prepared_builder(cfg.name, cfg.data_dir)
        info = self._builder.info
        self._splits = {split: cfg[key] for split, key in _SPLIT_KEYS.items()}
        self._sizes = {split: _split_size(info, cfg, key) for split, key in _SPLIT_KEYS.items()}
        features = info.features
        if cfg.image_key not in features or not isinstance(features[cfg.image_key], tfds.features.Image):
            raise ValueError(f"data.image_key={cfg.image_key!r} is not an image feature of {cfg.name}: {features}")
        label = features[cfg.label_key] if cfg.label_key in features else None
        self._has_labels = isinstance(label, tfds.features.ClassLabel)
        self.num_classes = label.num_classes if self._has_labels else 1
        self._channels = 1 if features[cfg.image_key].shape[-1] == 1 else 3  # RGBA and unknown decode as RGB

    def num_examples(self, split: str) -> int:
        return self._sizes[split]

    def train_records(self, *, seed, epoch, first_step, steps, local_batch, process_index, process_count):
        host_split = tfds.even_splits(self._splits["train"], n=process_count, drop_remainder=True)[process_index]
        file_seed, buffer_seed = epoch_seeds(seed, epoch, 2)
        ds = self._encoded(host_split, shuffle_seed=file_seed)
        ds = ds.shuffle(self._cfg.shuffle_buffer, seed=buffer_seed)
        return ds.take(steps * local_batch).skip(first_step * local_batch)

    def eval_records(self, split, *, process_index, process_count):
        shares = tfds.even_splits(self._splits[split], n=process_count)
        if process_index >= self._sizes[split]:  # fewer examples than hosts: TFDS refuses this host's empty share
            return self._encoded(shares[0], shuffle_seed=None).take(0)  # the eval pass pads it (pipeline.eval_batches)
        return self._encoded(shares[process_index], shuffle_seed=None)

    def decode(self, record):
        image = tf.io.decode_image(record["image"], channels=self._channels, expand_animations=False)
        return tf.image.convert_image_dtype(image, tf.float32), record["label"]

    def _encoded(self, split, *, shuffle_seed):
        """{"image": encoded bytes, "label": int32} of `split`; files shuffled when `shuffle_seed` is given."""
        image_key, label_key = self._cfg.image_key, self._cfg.label_key
        ds = self._builder.as_dataset(
            split=split,
            shuffle_files=shuffle_seed is not None,
            decoders={image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False),
        )
        has_labels = self._has_labels
        return ds.map(
            lambda ex: {
                "image": ex[image_key],
                "label": tf.cast(ex[label_key], tf.int32) if has_labels else tf.constant(0, tf.int32),
            },
        )  # a renaming: not worth a parallel map


def _split_size(info, cfg, key):
    """Examples in the split named by `cfg[key]` (a TFDS split string, e.g. "train[:90%]", without "+")."""
    if "+" in cfg[key]:
        # tfds.even_splits divides each part of "a+b" separately: hosts got unequal shares (examples dropped, a
        # multi-host evaluation waiting forever on one host's extra batch) and steps_per_epoch disagreed with them.
        raise ValueError(
            f"data.{key}={cfg[key]!r}: splits joined with '+' are not supported (their per-host shares are uneven). "
            "Use one split of the dataset, sliced as you need (e.g. 'train[:90%]')."
        )
    try:
        return info.splits[cfg[key]].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"data.{key}={cfg[key]!r} is not a split of {cfg.name}, which has {sorted(info.splits)}: {error}"
        ) from None


def _not_prepared_message(builder, name):
    root = str(builder.data_dir_root)
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:
        manual_dir = f"{root}/downloads/manual"
        return (
            f"TFDS dataset {name!r} is not prepared in {root} (no {builder.data_dir}). It needs a manual download: "
            f"put its files into {manual_dir}:\n{textwrap.indent(textwrap.dedent(manual).strip(), '  ')}\n"
            f"then run `tfds build {name} --data_dir={root}` and set data.data_dir={root!r}."
        )
    return (
        f"TFDS dataset {name!r} is not prepared in {root} (no {builder.data_dir}). Run "
        f"`tfds build {name} --data_dir={root}` on a machine with internet access (or copy a prepared "
        f"{builder.name}/ folder there) and set data.data_dir={root!r}."
    )
