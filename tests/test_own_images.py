"""The README's "Train on your own images" block, run as written on a generated folder of 3 classes.

Each training command gets `:runlocal` (the same composition, small networks, 3 steps); nothing else changes,
and the commands run from a directory that is not the checkout, as a user's would after `pip install`.
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import support

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


def write_folder(root: pathlib.Path) -> None:
    """my_images/{train,test}/<class>_<n>.png|jpg: 3 classes of coloured noise in different sizes and formats."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        for name in ("cat", "dog", "owl"):
            for i in range(count):
                h, w = rng.integers(24, 48, size=2)
                ext = "jpg" if i % 2 else "png"
                path = root / "my_images" / split / f"{name}_{i:04d}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def test_the_readme_own_images_commands_train_all_three_compositions_and_embed_a_folder(tmp_path):
    write_folder(tmp_path)
    block = readme_block("Train on your own images")
    block = re.sub(r"(--config=configs/\w+\.py)", r"\1:runlocal", block)
    env = dict(support.subprocess_env(), PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    result = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for name in ("my_gen", "my_repr", "my_joint"):
        assert (tmp_path / "workdirs" / name / "checkpoints" / "3").is_dir(), name
    features = np.load(tmp_path / "my_features.npy")
    assert features.shape[0] == 9 and features.dtype == np.float32 and np.all(np.isfinite(features))
    listed = (tmp_path / "my_features.txt").read_text().split()
    assert listed == sorted(f"{c}_{i:04d}.{'jpg' if i % 2 else 'png'}" for c in ("cat", "dog", "owl") for i in range(3))
    assert "embedding: 100%" in result.stderr  # the progress bar
