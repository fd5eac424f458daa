"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

import importlib.util
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from lzn_jax import checkpoint

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name, arg=None):
    """`get_config(arg)` of configs/<name>.py, loaded from its path as `python -m lzn_jax.main` does."""
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def saved_items(workdir, step) -> dict:
    """Every item of the checkpoint at `step` of a run's workdir, restored as numpy arrays (however it was sharded)."""
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), read_only=True)
    meta = mngr.item_metadata(step)
    target = {
        item: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta[item], is_leaf=lambda m: hasattr(m, "shape"))
        for item in checkpoint.ITEMS
    }
    restored = mngr.restore(step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in target.items()}))
    return {item: restored[item] for item in checkpoint.ITEMS}


TINY_TRUNK = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)


def tiny_joint_config():
    """configs/digits_joint.py:runlocal shrunk to 8x8 images, a tiny NCSN++ and 3 sampler steps: quick to compile."""
    config = load_config("digits_joint", "runlocal")
    config.encoder.update(TINY_TRUNK)
    config.decoder.update(TINY_TRUNK)
    config.data.image_size = 8
    config.rf.euler_steps = 3
    return config


def tiny_joint_model():
    """(LZN, params) of `tiny_joint_config()`, params freshly initialised."""
    from lzn_jax import api

    lzn = api.LZN.from_config(tiny_joint_config())
    batch = {"image": np.zeros((2, 8, 8, 1), np.float32), "label": np.zeros((2,), np.int32)}
    return lzn, lzn.task.init(jax.random.key(0), batch)


def prepare_tfds_metadata(root, datasets, num_examples: int) -> str:
    """A TFDS data dir holding only the metadata (dataset_info.json, features.json) of `datasets`.

    datasets: ((name, test split name), ...). Under `tfds.testing.mock_data(policy=USE_FILES, data_dir=root)`
    every split then has `num_examples` random examples, and `is_prepared`, split lookup and feature specs are
    TFDS's own.
    """
    import tensorflow_datasets as tfds

    root = str(root)
    for name, test_split in datasets:
        builder = tfds.builder(name, data_dir=root)
        splits = [
            tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0, filename_template=None)
            for split in ("train", test_split)
        ]
        builder.info.set_splits(tfds.core.SplitDict(splits))
        os.makedirs(builder.data_dir, exist_ok=True)
        builder.info.write_to_directory(builder.data_dir)
    return root
