"""An official PyTorch checkpoint, converted, evaluated by `lzn_jax.main --mode=eval` (train.evaluate)."""

import pytest
import json
import os

import jax
import numpy as np
from support import tiny_joint_config
from test_convert import all_fields, official_state_shapes, synthetic_state_dict

from lzn_jax import api, convert, train

@pytest.mark.slow  # 19 s cold on 2 cores (fast-tier budget)
def test_converted_official_checkpoint_is_evaluated_and_loaded(tmp_path):
    config = tiny_joint_config()
    config.rf.euler_steps = 2
    config.evals = {"class_accuracy": dict(splits=("test",), stds=(0.0,), batch_size=360)}
    official = {}
    for section, fields in convert.model_sections(config).items():
        entry = convert.CHECKPOINT_ENTRIES[section]
        official[entry] = synthetic_state_dict(official_state_shapes(all_fields(fields), 8, 1))
    params, ema = convert.convert_checkpoint(official, config)
    out = str(tmp_path / "converted")
    convert.save_converted(out, params, ema)

    config.checkpoint.path = out
    workdir = str(tmp_path / "eval")
    results = train.evaluate(config, workdir)
    assert set(results) == {"eval/accuracy", "eval/accuracy_with_class_weights"}
    assert json.load(open(os.path.join(workdir, "eval_0.json"))) == results

    lzn, loaded = api.load(out, config=config)
    jax.tree.map(np.testing.assert_array_equal, loaded, ema)


def test_eval_mode_without_a_checkpoint_or_an_evaluator_stops_before_anything_is_built(tmp_path):
    """The bugs: with no checkpoint, --mode=eval compiled and ran the state's init before saying so, and left an
    empty checkpoints/ behind; with every evaluator switched off (every :runlocal config) it exited 0 having
    evaluated nothing."""
    config = tiny_joint_config()
    config.evals = {"class_accuracy": dict(splits=("test",), stds=(0.0,))}
    workdir = tmp_path / "never_trained"
    with pytest.raises(FileNotFoundError, match="no config.checkpoint.path: nothing to evaluate"):
        train.evaluate(config, str(workdir))
    assert not workdir.exists()
    config.evals.class_accuracy.every_steps = -1
    with pytest.raises(ValueError, match=r"every evaluator .* is switched off .*every_steps=0"):
        train.evaluate(config, str(workdir))
