"""Helpers shared by test modules (plain functions; fixtures live in conftest.py)."""

import importlib.util
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from lzn_jax import checkpoint, configlib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


def subprocess_env(*, devices: int = 1, cache_dir=None) -> dict:
    """The environment of a `python -m lzn_jax.main` subprocess: CPU, this checkout first on the path, `devices`
    forced host devices, and (with `cache_dir`) a persistent compilation cache shared by the test's runs, so
    every process after the first loads its executables instead of compiling them."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")  # fmt: skip
    if devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    return env


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


TINY_TRUNK = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)

# Case study 3's tiny configs freeze their decoder and label anchors from step 2 on, as joint_cifar10 freezes its
# decoder at step 60 000 of 200 000: the short runs cross a freeze (and test_fsdp_main's restarts resume past one),
# steps 0 and 1 still train every module, and tests/test_train.py's freezing test runs the one-step test's program
# from a state at step 2 instead of compiling a program with other constants.
FROZEN_FROM_STEP = 2
FREEZE = {"module_steps.decoder": FROZEN_FROM_STEP, "module_steps.label_anchors": FROZEN_FROM_STEP}

# The settings of tests/test_fsdp_main.py's runs of `python -m lzn_jax.main` on 8 devices (over their :runlocal
# configs). tests/multidevice/test_api_sharded.py trains the joint one in process with the same settings, so the
# suite compiles that 8-device train step once: the later of the two loads it from the persistent compilation cache.
EIGHT_DEVICE_STEP = {"batch_size": 16, "data.image_size": 8, "zoning.num_steps": 3, "optim.eps": 0.1}
EIGHT_DEVICE_JOINT = {"encoder.nf": 8, "encoder.ch_mult": (1,), "decoder.nf": 8, "decoder.ch_mult": (1,),
                      "zoning.label_num_steps": 2, **FREEZE}  # fmt: skip


def tiny_joint_config():
    """configs/digits_joint.py:runlocal shrunk to 8x8 images, a tiny NCSN++ and 3 sampler steps: quick to compile;
    its decoder and label anchors freeze at FROZEN_FROM_STEP."""
    return configlib.override(_tiny_ncsnpp(load_config("digits_joint", "runlocal")), **FREEZE)


def _tiny_ncsnpp(config):
    """`config` (an NCSN++ composition) on 8x8 images with one-level NCSN++ trunks and 3 sampler steps."""
    for section in ("encoder", "decoder"):
        if config[section].get("name"):
            config[section].update(TINY_TRUNK)
    config.data.image_size = 8
    config.rf.euler_steps = 3
    return config


def step_configs() -> dict:
    """One small config per task, {name: config}: the train-step tests (tests/test_train.py) and the bfloat16
    report (experiments/numerics_report.py) share them, so each step is compiled once per suite run (the persistent
    compilation cache turns a later build of the same program into a load)."""
    gen = _tiny_ncsnpp(load_config("digits_gen", "runlocal"))
    representation = load_config("digits_repr", "runlocal")
    simclr = load_config("digits_simclr", "runlocal")
    for config in (representation, simclr):
        config.encoder.update(depth=18, base_width=32, small_images=True)
    return {"generation": gen, "generation_conditional": tiny_joint_config(), "representation": representation,
            "simclr": simclr}  # fmt: skip


def step_batch(config) -> dict:
    """A random batch of `config`'s train shapes (uniform pixels; a noisy copy as the second view)."""
    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
    batch = {"image": rng.uniform(-1, 1, shape).astype(np.float32),
             "label": rng.integers(0, config.num_classes, shape[:1]).astype(np.int32)}  # fmt: skip
    if config.data.num_views == 2:
        batch["image2"] = np.clip(batch["image"] + 0.1 * rng.standard_normal(shape), -1, 1).astype(np.float32)
    return batch


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
