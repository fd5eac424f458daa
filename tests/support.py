"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

import importlib.util
import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name, arg=None):
    """`get_config(arg)` of configs/<name>.py, loaded from its path as `python -m lzn_jax.main` does."""
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
