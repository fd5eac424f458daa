"""Every paper config walks the user's road: `python -m lzn_jax.main --config=configs/<paper>.py:runlocal`, a few
steps and then every one of its evaluators, replicated and with `mesh.fsdp`, on 8 CPU devices.

Data: the TFDS configs (CIFAR-10, ImageNet) read `tfds.testing.mock_data` through the real TFDS source; the
image-folder configs (AFHQ-Cat, CelebA-HQ, LSUN-Bedroom) read a generated folder of 256×256 PNGs laid out as
the config's splits say. The networks are the `:runlocal` ones (small, at the runlocal image size, which the
pipelines resize to); the FID evaluator gets random Inception weights from a file, as tests/test_fid.py.

Bugs these catch: a paper config whose evaluators cannot be built or run with its own task (a missing key, an
evaluator that needs a module the composition lacks), an FSDP layout that `main` cannot train or evaluate, a
config that only works on the digits source.
"""

import functools
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import support
from lzn_jax import files
from lzn_jax.evaluators import inception

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_EXAMPLES = 16
STEPS = 2
TFDS_DATASETS = (("cifar10", "test"), ("imagenet2012", "validation"))
PAPER_CONFIGS = ("gen_cifar10", "gen_afhq_cat", "gen_celebahq", "gen_lsun_bedroom", "repr_imagenet", "joint_cifar10")

# The 256 px configs differ from gen_afhq_cat in constants their train step bakes in (EMA decays, the encoder's
# learning rate), not in its structure. Given gen_afhq_cat's values, they share its compiled step through the
# file's compilation cache instead of compiling their own (22-30 s a run on one core). Their own values are floats
# of the same kind; `tests/test_configs.py` checks the configs' values.
SAME_STEP_AS = {"gen_celebahq": "gen_afhq_cat", "gen_lsun_bedroom": "gen_afhq_cat"}
STEP_CONSTANTS = ("ema.encoder", "ema.decoder", "optim.lr.encoder", "optim.lr.decoder")

# Small counts per evaluator kind: every evaluator runs, on a few examples.
SMALL = {
    "samples": {"per_class": 2, "num": 4},
    "reconstruction": {"num": 4, "repeats": 1},
    "fid": {"num_samples": 8, "num_reference_samples": 8},
    "class_accuracy": {},
    "linear_probe": {"num_epochs": 2, "batch_size": 8},
    "export": {},
}

# The metric prefix each evaluator kind writes.
METRICS = {"samples": "eval/samples_", "reconstruction": "eval/reconstruction_l2", "fid": "eval/fid_",
           "class_accuracy": "eval/accuracy", "linear_probe": "eval/linear_probe_accuracy",
           "export": "eval/exported_embeddings"}  # fmt: skip

# Runs lzn_jax.main as `python -m` does, inside the TFDS mock when a prepared data dir is given.
_MAIN_UNDER_MOCK = """
import contextlib, runpy, sys
import tensorflow_datasets as tfds
data_dir, num = sys.argv[1], int(sys.argv[2])
mock = tfds.testing.mock_data(num_examples=num, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir)
sys.argv = ["lzn_jax.main"] + sys.argv[3:]
with mock if data_dir else contextlib.nullcontext():
    runpy.run_module("lzn_jax.main", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return support.prepare_tfds_metadata(tmp_path_factory.mktemp("tfds"), TFDS_DATASETS, NUM_EXAMPLES)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for every run of this file (as `main` keeps one per workdir): the 256 px
    configs share their network, batch and evaluators, so most of their programs compile once."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random_inception.npz"
    np.savez(path, **inception.state_dict_from_variables(inception.init_inception_variables(0)))
    return str(path)


def image_folder(root: pathlib.Path, config) -> str:
    """NUM_EXAMPLES random 256×256 RGB PNGs in each split folder the config names (one folder if both are '')."""
    rng = np.random.default_rng(0)
    for split in {config.data.train_split, config.data.test_split}:
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(NUM_EXAMPLES):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:04d}.png")
    return str(root)


def evaluator_overrides(config, inception_weights: str) -> list[str]:
    """--config.evals.* flags that switch every evaluator of the config on at the last step, with small counts."""
    flags = []
    for name, spec in config.evals.items():
        kind = spec.get("kind", name)
        values = {"every_steps": STEPS, **SMALL[kind]}
        if kind == "fid":
            values["inception_weights"] = inception_weights
        flags += [f"--config.evals.{name}.{key}={value}" for key, value in values.items()]  # every key is declared
    return flags


def step_constants_of(donor) -> list[str]:
    """--config flags that give a run `donor`'s STEP_CONSTANTS (none without a donor)."""
    if donor is None:
        return []
    config = support.load_config(donor, "runlocal")
    return [f"--config.{key}={functools.reduce(getattr, key.split('.'), config)}" for key in STEP_CONSTANTS]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["replicated", "fsdp"])
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_trains_and_evaluates_through_main(name, layout, tfds_dir, inception_weights, compile_cache,
                                                        tmp_path):  # fmt: skip
    config = support.load_config(name, "runlocal")
    if config.data.source == "tfds":
        data_dir, mock_dir = tfds_dir, tfds_dir
    else:
        data_dir, mock_dir = image_folder(tmp_path / "images", config), ""
    workdir = tmp_path / "work"
    args = [
        f"--config={REPO / 'configs' / name}.py:runlocal", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
        f"--config.num_train_steps={STEPS}", f"--config.mesh.fsdp={layout == 'fsdp'}",
        *evaluator_overrides(config, inception_weights), *step_constants_of(SAME_STEP_AS.get(name)),
    ]  # fmt: skip
    env = support.subprocess_env(devices=8, cache_dir=compile_cache)
    result = subprocess.run([sys.executable, "-c", _MAIN_UNDER_MOCK, mock_dir, str(NUM_EXAMPLES), *args], env=env,
                            capture_output=True, text=True, timeout=3600, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, f"{name} ({layout}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    records = files.read_jsonl(str(workdir / "metrics.jsonl"))
    final = {k: v for r in records if r["step"] == STEPS for k, v in r.items()}
    assert np.isfinite(final["train/loss"]), final
    for evaluator, spec in config.evals.items():
        prefix = METRICS[spec.get("kind", evaluator)]
        assert any(k.startswith(prefix) and np.isfinite(v) for k, v in final.items()), f"{evaluator}: no {prefix}* in {final}"
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()
