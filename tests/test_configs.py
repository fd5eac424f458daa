"""Every config file loads, passes the checks and builds its whole train state (shapes only: jax.eval_shape)."""

import dataclasses
import importlib
import inspect
import re
import shlex
import sys

import jax
import pytest
from absl import flags
from ml_collections import config_flags
from support import CONFIG_DIR
from support import load_config as load

from configs import common
from lzn_jax import configlib, evaluators, models, parallel, tasks, train

CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "common")


def abstract_state(config):
    """(task, abstract train state) as `train.setup` builds them, on this process's devices (no compute)."""
    built = train.build(config, parallel.make_mesh(config.mesh.data, config.mesh.model))
    return built.task, built.abstract_state


def test_every_experiment_has_a_config():
    expected = {"gen_cifar10", "gen_afhq_cat", "gen_celebahq", "gen_lsun_bedroom", "repr_imagenet", "joint_cifar10",
                "digits_joint", "digits_gen", "digits_repr", "digits_simclr"}  # fmt: skip
    assert expected <= set(CONFIGS)


@pytest.mark.slow  # 36 s cold on 2 cores (fast-tier budget)
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_checks_and_builds(name, arg):
    config = load(name, arg)
    configlib.check(config)
    task, state = abstract_state(config)
    assert set(state.params) == set(task.modules) == set(tasks.model_configs(config))
    assert jax.tree.structure(state.ema_params) == jax.tree.structure(state.params)
    if arg == "runlocal":
        assert config.num_train_steps <= 5 and config.batch_size <= 16


def test_paper_configs_keep_the_official_hyperparameters():
    joint = load("joint_cifar10")
    assert (joint.batch_size, joint.latent_dim, joint.num_train_steps) == (2000, 200, 200_000)
    assert dict(joint.module_steps) == {"encoder": 200_000, "decoder": 60_000, "label_anchors": 200_000}
    assert dict(joint.optim.lr) == {"encoder": 5e-5, "decoder": 2e-3, "label_anchors": 1e-4}
    assert (joint.zoning.solver, joint.zoning.num_steps, joint.zoning.label_num_steps) == ("dpm_solver++", 20, 100)
    assert joint.optim.warmup_steps == 5000 and joint.optim.grad_clip == 1.0 and joint.ema.decoder == 0.999999
    repr_ = load("repr_imagenet")
    assert (repr_.batch_size, repr_.latent_dim, repr_.optim.lr.encoder, repr_.ema.encoder) == (8192, 256, 8e-4, 0.9999)
    assert (repr_.zoning.solver, repr_.zoning.prior_scale, repr_.zoning.cutoff) == ("euler", 0.45, 0.2)
    assert (repr_.loss.prob, repr_.loss.cross_entropy) == (0.0, 1.0)
    afhq = load("gen_afhq_cat")
    assert (afhq.batch_size, afhq.optim.lr.encoder, afhq.optim.lr.decoder, afhq.num_train_steps) == (256, 2e-6, 2e-4, 60_000)
    for name, encoder_lr, ema in (("gen_afhq_cat", 2e-6, 0.999999), ("gen_celebahq", 4e-6, 0.9999),
                                  ("gen_lsun_bedroom", 2e-6, 0.99999)):  # fmt: skip
        config = load(name)  # test_paper_configs runs the last two with gen_afhq_cat's values: checked here
        assert (config.optim.lr.encoder, config.optim.lr.decoder, config.ema.encoder, config.ema.decoder) == (
            encoder_lr, 2e-4, ema, ema), name


def test_only_the_256px_configs_store_their_state_with_fsdp():
    """The 256 px step needs 39.16 GiB per device replicated on the paper's 32 devices by the CPU compiler's
    estimate (an A100-40GB holds 40), 35.93 GiB with FSDP (docs/scaling.md, "Rehearsal"): a 256 px config that lost
    the default could run out of memory on the paper's GPUs. The others fit replicated, as the official trainer runs."""
    for name in ("gen_afhq_cat", "gen_celebahq", "gen_lsun_bedroom"):
        assert load(name).mesh.fsdp is True, name
    for name in ("gen_cifar10", "joint_cifar10", "repr_imagenet"):
        assert load(name).mesh.fsdp is False, name


@pytest.mark.parametrize("name", ["digits_gen", "gen_cifar10", "digits_joint"])
def test_the_plain_rectified_flow_baseline_command_of_the_config_docstring_passes_the_checks(name, monkeypatch):
    """The overrides a config's docstring gives for the RF baseline, parsed as `main` parses them. The bug: they
    left evaluators on that need an encoder or labels (reconstruction, class and sample accuracy), and the run
    failed after its state was built; `configlib.check` now refuses those before anything is built."""
    doc = " ".join(importlib.import_module(f"configs.{name}").__doc__.split())
    command = re.search(r"baseline[^`]*`([^`]*)`", doc).group(1)
    overrides = shlex.split(command)  # as a shell passes them: --config.encoder.name='' is an empty name
    assert "--config.encoder.name=" in overrides, doc
    config = parse([f"--config={CONFIG_DIR}/{name}.py", *overrides], monkeypatch)
    configlib.check(config)
    task, state = abstract_state(config)
    assert task.modules == ("decoder",) and task.encoder is None and not task.conditional
    without_switches = parse([f"--config={CONFIG_DIR}/{name}.py", *[o for o in overrides if ".evals." not in o]],
                             monkeypatch)  # fmt: skip
    with pytest.raises(ValueError, match=r"needs an image encoder .* Switch it off with config\.evals\."):
        configlib.check(without_switches)


MODEL_SECTIONS = ("encoder", "decoder", "label_anchors")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_model_field_is_in_its_section(name):
    """Only a declared key can be a `--config.*` flag, and the sections once named only the fields they changed:
    `--config.encoder.stage_blocks='(1, 1, 1, 1)'` (a ResNet-10) was refused as an unknown key."""
    config = load(name)
    for section in MODEL_SECTIONS:
        if config.get(section) and config[section].get("name"):
            cls = models.model_class(config[section].name)
            fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
            assert set(config[section]) == {"name"} | fields - set(common.DERIVED_FIELDS), (name, section)


def parse(argv, monkeypatch):
    """`argv` parsed by the flag `python -m lzn_jax.main` defines (lzn_jax/main.py), into a fresh flag set
    (ml_collections reads the `--config.*` overrides from sys.argv)."""
    monkeypatch.setattr(sys, "argv", ["main", *argv])
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(sys.argv)
    return values.config


def test_a_field_whose_default_is_none_takes_a_flag(monkeypatch):
    config = parse([f"--config={CONFIG_DIR}/digits_repr.py", "--config.encoder.stage_blocks=(1, 1, 1, 1)",
                    "--config.encoder.remat=True"], monkeypatch)  # fmt: skip
    assert config.encoder.stage_blocks == (1, 1, 1, 1) and config.encoder.remat is True
    assert tasks.build(config).encoder.stage_blocks == (1, 1, 1, 1)
    assert parse([f"--config={CONFIG_DIR}/digits_repr.py"], monkeypatch).encoder.stage_blocks is None
    config = parse([f"--config={CONFIG_DIR}/digits_gen.py", "--config.encoder.latent_transformation_resolutions=(8,)"], monkeypatch)
    assert tuple(config.encoder.latent_transformation_resolutions) == (8,)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_evaluator_setting_is_in_its_section(name):
    """Only a declared key can be a `--config.*` flag, and the `evals` entries once named only the settings they
    changed: `--config.evals.samples.seed=3` was refused as an unknown key."""
    config = load(name)
    for eval_name, spec in config.evals.items():
        kind = evaluators.kind_of(eval_name, spec)
        settings = {k for k, d in evaluators.spec_keys(kind).items() if k != "**" and d is not inspect.Parameter.empty}
        assert settings <= set(spec), (name, eval_name, settings - set(spec))


def test_an_evaluator_setting_the_config_file_leaves_out_takes_a_flag(monkeypatch):
    config = parse([f"--config={CONFIG_DIR}/digits_joint.py", "--config.evals.samples.seed=3",
                    "--config.evals.class_accuracy.batch_size=16", "--config.evals.samples.weights=('raw',)"],
                   monkeypatch)  # fmt: skip
    assert config.evals.samples.seed == 3 and config.evals.class_accuracy.batch_size == 16
    assert tuple(config.evals.samples.weights) == ("raw",)
    configlib.check(config)
    assert parse([f"--config={CONFIG_DIR}/digits_joint.py"], monkeypatch).evals.class_accuracy.batch_size is None


def test_the_default_evaluation_schedule_moves_the_evaluators_that_have_none_of_their_own(monkeypatch):
    """Every entry of every shipped config set its own every_steps, so `--config.eval_every_steps=N` (the "default
    schedule of the evaluators") changed nothing, silently."""
    schedule = lambda c: {n: evaluators.every_steps(s, c.eval_every_steps) for n, s in c.evals.items()}  # noqa: E731
    config = parse([f"--config={CONFIG_DIR}/digits_joint.py"], monkeypatch)
    assert schedule(config) == {"class_accuracy": 500, "samples": 500, "sample_accuracy": 1500}
    config = parse([f"--config={CONFIG_DIR}/digits_joint.py", "--config.eval_every_steps=100",
                    "--config.evals.samples.every_steps=7"], monkeypatch)  # fmt: skip
    assert schedule(config) == {"class_accuracy": 100, "samples": 7, "sample_accuracy": 1500}
    assert schedule(load("gen_cifar10")) == {"samples": 5000, "reconstruction": 5000, "fid": -1}
    assert schedule(load("repr_imagenet")) == {"linear_probe": 1000, "export": 1_000_000}
    assert set(schedule(load("joint_cifar10")).values()) == {5000, -1}


def test_a_section_refuses_a_field_its_model_does_not_have():
    with pytest.raises(ValueError, match="did you mean 'stage_blocks'"):
        common.model_section("resnet", stage_block=(1, 1, 1, 1))


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "digits_simclr"] + ["digits_simclr"])
def test_a_misspelled_config_argument_is_refused(name):
    """The bug: every config returned its full paper settings for any argument but "runlocal", so
    `--config=configs/repr_imagenet.py:run_local` started a 128-device ImageNet run on a laptop."""
    with pytest.raises(ValueError, match="Unknown config argument 'runlokal'"):
        load(name, "runlokal")
    assert load(name, "runlocal").batch_size == 8  # the tiny version
