"""The API's promise on what users load: params from `api.load` of a real short training run work in every
transform, and the README's code runs as written (a snippet that stops running fails here, not for a reader)."""

import pathlib
import re

import jax
import pytest
from api_checks import check_every_method, train_short_run
from support import tiny_joint_config

from lzn_jax import api, data

pytestmark = pytest.mark.slow
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """A directory holding workdirs/digits_joint: a 2-step run of the tiny joint config, as the README loads it."""
    root = tmp_path_factory.mktemp("readme")
    train_short_run(tiny_joint_config(), root / "workdirs" / "digits_joint")
    return root


def test_every_method_eager_jit_vmap_grad_on_loaded_params(run_root):
    lzn, params = api.load(str(run_root / "workdirs" / "digits_joint"))
    assert {leaf.sharding for leaf in jax.tree.leaves(params)} == {jax.sharding.SingleDeviceSharding(jax.devices()[0])}
    images, _ = data.load_arrays(lzn.config.data, "test")
    check_every_method(lzn, params, images[:6])


def readme_python_blocks() -> list[str]:
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_snippets_run_as_written(run_root, monkeypatch):
    """Every ```python block of the README, in order and in one namespace, from a directory with the run in it."""
    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(run_root)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 -- the README's own code
    assert namespace["labels"].shape == (namespace["images"].shape[0],)
    assert namespace["loss"].shape == ()
