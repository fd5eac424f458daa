r"""Embeds a folder of images with a trained (or converted) model: one row of features per image, in a .npy file.

    python -m lzn_jax.embed --workdir=workdirs/digits_repr --images=my_images --out=features.npy
    python -m lzn_jax.embed --workdir=converted/joint --config=configs/joint_cifar10.py --images=DIR --out=F.npy

Images are read by the training pipeline's image-folder source (every .jpg/.jpeg/.png/.gif under the folder,
sorted, decoded to RGB, resized and center-cropped to the model's size as in evaluation), in batches of
--batch_size, with a progress bar. Row i of the output is the i-th file of `OUT.txt`, written beside it.
Inference only: this imports the public API and the data pipeline, not the training code.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from lzn_jax import api, config_files, data
from lzn_jax.data import image_folder

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training run's --workdir (config.json + checkpoints), or a converted checkpoint.")
flags.DEFINE_string("images", None, "Folder of images (searched recursively; local or gs://).")
flags.DEFINE_string("out", None, "Output .npy file: float32 [N, D], one row per image.")
flags.DEFINE_integer("batch_size", 256, "Images per forward pass.")
flags.DEFINE_bool("apply_head", True, "ResNet encoders: False gives the pooled features before the projection head.")
flags.DEFINE_bool("use_ema", True, "The EMA params (what the paper evaluates) or the raw ones.")
config_flags.DEFINE_config_file("config", None, "Config file, only for a converted checkpoint without config.json.")
flags.mark_flags_as_required(["workdir", "images", "out"])


def folder_config(data_cfg, images: str):
    """The model's data config reading every image under `images` as the "test" split, unlabeled."""
    cfg = data_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.update(dict(source="image_folder", data_dir=images, train_split="", test_split="", num_classes=1))
    return cfg


def embed_folder(lzn, params, images: str, *, batch_size: int, apply_head: bool = True, progress=None) -> np.ndarray:
    """Features [N, D] of every image under `images`, in sorted file order, computed `batch_size` at a time."""
    cfg = folder_config(lzn.config.data, images)
    total = data.num_examples(cfg, "test")
    embed = jax.jit(lambda p, x: lzn.embed(p, x, apply_head=apply_head))
    rows = []
    for batch in data.eval_iterator(cfg, split="test", batch_size=batch_size):
        features = np.asarray(embed(params, batch["image"]))  # the last batch is padded to full size
        rows.append(features[batch["mask"]])
        if progress is not None:
            progress.update(int(batch["mask"].sum()))
    features = np.concatenate(rows)
    assert len(features) == total, (len(features), total)
    return features


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tqdm  # installed with tensorflow-datasets

    if not FLAGS.out.endswith(".npy"):
        raise ValueError(f"--out={FLAGS.out!r} must name a .npy file.")
    lzn, params = api.load(FLAGS.workdir, config=FLAGS.config, use_ema=FLAGS.use_ema)
    cfg = folder_config(lzn.config.data, FLAGS.images)
    with tqdm.tqdm(total=data.num_examples(cfg, "test"), unit="image", desc="embedding", file=sys.stderr) as bar:
        features = embed_folder(lzn, params, FLAGS.images, batch_size=FLAGS.batch_size, apply_head=FLAGS.apply_head,
                                progress=bar)  # fmt: skip
    with open(FLAGS.out, "wb") as f:
        np.save(f, features.astype(np.float32))
    files = image_folder.list_images(FLAGS.images)  # the order the source read them in
    listing = FLAGS.out[: -len(".npy")] + ".txt"
    with open(listing, "w", encoding="utf-8") as f:
        f.write("".join(os.path.relpath(path, FLAGS.images) + "\n" for path in files))
    print(f"{features.shape[0]} images -> {FLAGS.out} {features.shape} float32; row order in {listing}")


def run():
    config_files.rewrite_argv(sys.argv)  # configs/<name>.py from any directory; `configs` importable
    try:
        app.run(main)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
