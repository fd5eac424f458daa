"""`pip install` ships the configs: `--config=configs/<name>.py` works from a directory that has no configs/."""

import pytest
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHECK = """
import sys
from lzn_jax import main
argv = ["main", "--config=configs/digits_joint.py:runlocal", "--workdir=w"]
from lzn_jax import config_files
config_files.rewrite_argv(argv)
main._parse_flags(argv)
print(main.__file__)
print(argv[1])
print(main.FLAGS.config.batch_size)
"""


@pytest.mark.slow  # 11 s cold on 2 cores (fast-tier budget)
def test_an_installed_wheel_finds_its_configs_outside_a_checkout(tmp_path):
    """Installed lzn_jax once had no configs: the README's commands needed the checkout as working directory."""
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to setup.py
    keep = {"setup.py", "README.md", "lzn_jax", "configs"}
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (folder == str(ROOT) and n not in keep)])  # fmt: skip
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(source)],
                   check=True, cwd=tmp_path)  # fmt: skip
    wheel = next((tmp_path / "wheel").glob("lzn_jax-*.whl"))
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    module, config, batch_size = out.stdout.split()
    assert module.startswith(str(site)), module
    assert config == f"--config={site}/lzn_jax/shipped/configs/digits_joint.py:runlocal"
    assert batch_size == "8"
