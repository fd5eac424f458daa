"""Finding and loading config files (`configs/<name>.py[:arg]`): one road for `main`, `embed`, `convert` and `api`.

A config file imports `configs.common`, so the folder above its `configs/` must be on sys.path; and
`configs/<name>.py` that does not exist where the command runs names the copy shipped with lzn_jax, so the
README's commands work from any directory after `pip install`. Both were once done by `main` alone:
`python -m lzn_jax.convert --config configs/joint_cifar10.py` and `lzn_jax.embed --config=...` then worked only
from the checkout's root ("No module named 'configs'"), and convert ignored a `:runlocal` argument.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import ml_collections


def configs_folder() -> Optional[str]:
    """The config files shipped with this lzn_jax: lzn_jax/shipped/configs when installed, or the checkout's configs/.

    Its parent goes on sys.path for `from configs import ...` (what config files and notebooks do).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "shipped", "configs"), os.path.join(os.path.dirname(here), "configs")):
        if os.path.isfile(os.path.join(folder, "common.py")):
            return folder
    return None


def shipped_config(path: str) -> Optional[str]:
    """The shipped copy of `configs/<name>.py` when `path` names one that does not exist here; else None."""
    folder, name = os.path.split(os.path.normpath(path))
    shipped = configs_folder()
    if os.path.exists(path) or folder != "configs" or shipped is None or not os.path.isfile(os.path.join(shipped, name)):
        return None
    return os.path.join(shipped, name)


def resolve(spec: str) -> tuple[str, str]:
    """(file, arg) of `spec` = "PATH[:arg]": the shipped copy for a `configs/<name>.py` not found here; the folder
    above the file's `configs/` is put on sys.path (for `from configs import common`)."""
    path, _, arg = spec.partition(":")
    path = shipped_config(path) or path
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    return path, arg


def load(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `spec` = "PATH[:arg]" (e.g. "configs/joint_cifar10.py:runlocal"), as `main` loads it."""
    path, arg = resolve(spec)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location("lzn_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"The config file {path!r} defines no get_config().")
    return module.get_config(arg) if arg else module.get_config()


def rewrite_argv(argv: list[str], flag: str = "--config") -> None:
    """Resolves the value of `flag` in argv in place (see `resolve`), for ml_collections' `config_flags`."""
    index = _flag_index(argv, flag)
    if index is None or not flag_value(argv, flag):
        return
    path, arg = resolve(flag_value(argv, flag))
    resolved = path + (":" + arg if arg else "")
    argv[index] = f"{flag}={resolved}" if argv[index].startswith(flag + "=") else resolved


def flag_value(argv, flag: str = "--config") -> Optional[str]:
    """The value of `flag` in argv (`--config=X` or `--config X`), or None."""
    index = _flag_index(argv, flag)
    return None if index is None else argv[index].split("=", 1)[1] if argv[index].startswith(flag + "=") else argv[index]


def _flag_index(argv, flag: str) -> Optional[int]:
    """Index of the argument holding `flag`'s value, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return i
        if arg == flag and i + 1 < len(argv):
            return i + 1
    return None
