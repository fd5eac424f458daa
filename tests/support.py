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
