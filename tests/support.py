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
