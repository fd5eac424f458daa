"""Config files load the same way in every command: `configs/<name>.py[:arg]` from any directory."""

import os
import pathlib
import subprocess
import sys

import pytest

from lzn_jax import config_files

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_a_config_loads_from_another_directory_with_its_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_files.load("configs/digits_joint.py").batch_size > 8
    assert config_files.load("configs/digits_joint.py:runlocal").batch_size == 8
    with pytest.raises(ValueError, match="Unknown config argument 'runlokal'"):
        config_files.load("configs/digits_joint.py:runlokal")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config_files.load("configs/no_such_config.py")


@pytest.mark.parametrize("argv, expected", [
    (["m", "--config=configs/digits_joint.py:runlocal", "--workdir=w"], ["m", "--config={}:runlocal", "--workdir=w"]),
    (["m", "--config", "configs/digits_joint.py", "--out=configs/digits_joint.py"],
     ["m", "--config", "{}", "--out=configs/digits_joint.py"]),
    (["m", "--workdir=w"], ["m", "--workdir=w"]),
])  # fmt: skip
def test_rewrite_argv_touches_only_the_config_value(tmp_path, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    shipped = os.path.join(config_files.configs_folder(), "digits_joint.py")
    config_files.rewrite_argv(argv)
    assert argv == [a.format(shipped) for a in expected]


def _run_elsewhere(tmp_path, *args):
    """`python -m ...` from a directory with no configs/ and the checkout not on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.slow  # two interpreters importing JAX (and TFDS for embed): ~20 s on 2 cores
def test_convert_and_embed_find_the_shipped_configs_from_any_directory(tmp_path):
    """Both once loaded --config by path alone: from outside the checkout "No module named 'configs'" (the config
    imports configs.common), and convert ignored `:runlocal`. Each now gets past its config to the next input."""
    convert = _run_elsewhere(tmp_path, "lzn_jax.convert", "--checkpoint", "missing.npz",
                             "--config", "configs/digits_joint.py:runlocal", "--out", "o")  # fmt: skip
    assert convert.returncode == 2, convert.stderr[-2000:]
    assert convert.stderr.strip().splitlines()[-1] == "error: --checkpoint 'missing.npz' does not exist."
    embed = _run_elsewhere(tmp_path, "lzn_jax.embed", "--workdir=nowhere", "--config=configs/digits_joint.py:runlocal",
                           "--images=.", "--out=f.npy")  # fmt: skip
    assert embed.returncode == 2, embed.stderr[-2000:]
    assert "error: The directory 'nowhere' does not exist" in embed.stderr, embed.stderr[-2000:]
