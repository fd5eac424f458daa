"""Orbax checkpoints: round trip, fall-back past an unreadable checkpoint, clear errors for another architecture."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lzn_jax import checkpoint


def items(scale=1.0, width=3):
    params = {"encoder": {"dense": {"kernel": jnp.full((width, 2), scale)}}, "decoder": {"bias": jnp.full((2,), scale)}}
    return {
        "params": params,
        "ema_params": jax.tree.map(lambda x: x * 2, params),
        "opt_state": {"count": jnp.asarray(3)},
        "meta": {"step": jnp.asarray(7), "rng": jax.random.key_data(jax.random.key(1))},
    }


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_round_trip_and_latest(tmp_path):
    mngr = checkpoint.manager(str(tmp_path), max_to_keep=2)
    for step, scale in ((1, 1.0), (2, 2.0), (3, 3.0)):
        checkpoint.save(mngr, step, items(scale))
    mngr.wait_until_finished()
    assert mngr.all_steps() == [2, 3]  # keeps the last two
    step, restored = checkpoint.restore_latest(mngr, abstract(items()))
    assert step == 3
    np.testing.assert_array_equal(restored["params"]["encoder"]["dense"]["kernel"], 3.0)
    np.testing.assert_array_equal(restored["meta"]["rng"], items()["meta"]["rng"])


def test_unreadable_latest_falls_back_to_previous_with_a_warning(tmp_path, caplog):
    mngr = checkpoint.manager(str(tmp_path))
    checkpoint.save(mngr, 1, items(1.0))
    checkpoint.save(mngr, 2, items(2.0))
    mngr.wait_until_finished()
    for root, _, files in os.walk(tmp_path / "2" / "params"):  # damage every array file of step 2
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        step, restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path)), abstract(items()))
    assert step == 1
    np.testing.assert_array_equal(restored["params"]["decoder"]["bias"], 1.0)
    assert any(str(tmp_path / "2") in record.getMessage() for record in caplog.records)


def test_other_architecture_lists_the_mismatched_arrays(tmp_path):
    mngr = checkpoint.manager(str(tmp_path))
    checkpoint.save(mngr, 1, items(width=3))
    mngr.wait_until_finished()
    expected = abstract(items(width=5))
    expected["params"]["label_anchors"] = jax.ShapeDtypeStruct((10, 4), jnp.float32)
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
        checkpoint.restore_latest(mngr, expected)
    message = str(info.value)
    assert "params/encoder/dense/kernel: shape (3, 2) in the checkpoint, (5, 2) in the model" in message
    assert "params/label_anchors: missing from the checkpoint" in message


def test_restore_params_only_from_a_converted_checkpoint(tmp_path):
    mngr = checkpoint.manager(str(tmp_path))
    full = items(4.0)
    checkpoint.save(mngr, 0, {"params": full["params"], "ema_params": full["ema_params"]})
    mngr.wait_until_finished()
    restored = checkpoint.restore_params(str(tmp_path), abstract(items()))
    np.testing.assert_array_equal(restored["ema_params"]["decoder"]["bias"], 8.0)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        checkpoint.restore_params(str(tmp_path / "missing"), abstract(items()))
