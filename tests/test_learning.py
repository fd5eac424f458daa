"""Learning is asserted: tiny digits runs through `train.train_and_evaluate` (the road `main` takes) must learn.

Each run trains a small version of a digits config (8x8 digits, tiny networks, a few hundred steps) and the
tests read the final evaluator scalars from the run's metrics.jsonl, as a user reads them.
"""

import os

import pytest

from support import load_config

from lzn_jax import configlib, train, writers

pytestmark = pytest.mark.slow  # training runs of tens of seconds each

TINY_TRUNK = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
JOINT_STEPS = 150
REPR_STEPS = 100


def final_scalars(config, workdir) -> dict:
    """Every scalar the run wrote at its last step (train/*, eval/*)."""
    records = writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return {k: v for r in records if r["step"] == config.num_train_steps for k, v in r.items()}


def run(config, workdir) -> dict:
    train.train_and_evaluate(config, str(workdir))
    return final_scalars(config, str(workdir))


def schedule(config, steps):
    """Log, checkpoint and evaluate once, at the end."""
    config.update(dict(num_train_steps=steps, log_every_steps=steps, checkpoint_every_steps=steps,
                       eval_every_steps=steps))  # fmt: skip
    for spec in config.evals.values():
        spec.every_steps = steps


def joint_config(steps=JOINT_STEPS, **updates):
    """configs/digits_joint.py on 8x8 digits: tiny NCSN++ encoder and decoder, 5 + 10 zoning steps."""
    config = load_config("digits_joint")
    config.encoder.update(TINY_TRUNK)
    config.decoder.update(TINY_TRUNK)
    config.data.image_size = 8
    config.zoning.update(dict(num_steps=5, label_num_steps=10))
    config.optim.warmup_steps = 20
    del config.evals["samples"]
    config.evals.class_accuracy.stds = (0.0,)
    config.evals.sample_accuracy.update(per_class=20, num_epochs=50)
    schedule(config, steps)
    return configlib.override(config, **updates)


def repr_config(steps=REPR_STEPS, **updates):
    """configs/digits_repr.py on 8x8 digits, batch 64, a 50-epoch probe on encoder features and head outputs."""
    config = load_config("digits_repr")
    config.data.image_size = 8
    config.batch_size = 64
    config.optim.warmup_steps = 20
    config.evals.linear_probe.update(num_epochs=50)
    schedule(config, steps)
    return configlib.override(config, **updates)
