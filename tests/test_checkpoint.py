"""Orbax checkpoints: round trip, fall-back past an unreadable checkpoint, clear errors for another architecture."""

import logging
import os
import shutil

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


def saved(tmp_path, *scales, width=3):
    """A checkpoint directory with one step per scale (steps 1, 2, ...); returns its path."""
    mngr = checkpoint.manager(str(tmp_path))
    for step, scale in enumerate(scales, 1):
        checkpoint.save(mngr, step, items(scale, width))
    mngr.wait_until_finished()
    return tmp_path


def damage(step_dir, item="params", name=None):
    """Overwrites the files of one item of a checkpoint (every file, or those called `name`)."""
    for root, _, files in os.walk(step_dir / item):
        for file in files:
            if name is None or file == name:
                with open(os.path.join(root, file), "wb") as f:
                    f.write(b"not a checkpoint")


def test_damaged_newer_checkpoints_are_set_aside_so_the_resumed_run_saves_those_steps_again(tmp_path, caplog):
    """The bug: after falling back past a damaged step N, the resumed run could never save step N again (Orbax
    saves no step at or below its newest, and the loop skipped steps already listed), so every rerun trained to
    the end, reported success and left the damaged checkpoint as the run's last."""
    directory = saved(tmp_path, 1.0, 2.0, 3.0)
    damage(directory / "2")
    damage(directory / "3")
    mngr = checkpoint.manager(str(directory))
    with caplog.at_level(logging.WARNING):
        step, _ = checkpoint.restore_latest(mngr, abstract(items()))
    assert step == 1 and mngr.all_steps() == [1]
    assert (directory / "2.damaged").is_dir() and (directory / "3.damaged").is_dir()  # kept for inspection
    assert "saves step 3 again" in caplog.text
    checkpoint.save(mngr, 2, items(5.0))
    mngr.wait_until_finished()
    step, restored = checkpoint.restore_latest(checkpoint.manager(str(directory)), abstract(items()))
    assert step == 2
    np.testing.assert_array_equal(restored["params"]["decoder"]["bias"], 5.0)


def test_a_save_orbax_declines_raises_instead_of_passing_silently(tmp_path):
    """Orbax's save returns False for a step at or below its newest; a run would then report a checkpoint it
    never wrote."""
    mngr = checkpoint.manager(str(saved(tmp_path, 1.0, 2.0)))
    with pytest.raises(RuntimeError, match="declined to save step 1"):
        checkpoint.save(mngr, 1, items(3.0))


def test_when_every_checkpoint_is_damaged_one_error_names_each_step_and_why(tmp_path, caplog):
    """The bug: restore_latest skipped every unreadable checkpoint and returned None, so training silently started
    again from step 0 over a directory of checkpoints."""
    directory = saved(tmp_path, 1.0, 2.0)
    damage(directory / "1")
    damage(directory / "2")
    with pytest.raises(checkpoint.CheckpointRestoreError) as info, caplog.at_level(logging.WARNING):
        checkpoint.restore_latest(checkpoint.manager(str(directory)), abstract(items()))
    message = str(info.value)
    assert "None of the 2 checkpoint(s)" in message and "silently start again from step 0" in message
    lines = [line.strip() for line in message.splitlines()]
    assert any(line.startswith("step 2: ") for line in lines) and any(line.startswith("step 1: ") for line in lines)
    assert "damaged" in caplog.text


def test_a_damaged_checkpoint_is_read_twice_before_it_counts_as_damaged(tmp_path, monkeypatch):
    """A transient storage error (one failed read) restores the newest checkpoint instead of an older one."""
    directory = saved(tmp_path, 1.0, 2.0)
    real, calls = checkpoint._restore, []

    def flaky(mngr, step, abstract_items):
        calls.append(step)
        if len(calls) == 1:
            raise OSError("503 Service Unavailable")
        return real(mngr, step, abstract_items)

    monkeypatch.setattr(checkpoint, "_restore", flaky)
    step, _ = checkpoint.restore_latest(checkpoint.manager(str(directory)), abstract(items()))
    assert step == 2 and calls == [2, 2]


def test_an_incompatible_newest_checkpoint_stops_instead_of_falling_back(tmp_path):
    """A config change is not damage: restoring an older checkpoint would only hide it (or restore the wrong run)."""
    mngr = checkpoint.manager(str(tmp_path))
    checkpoint.save(mngr, 1, items(width=3))
    checkpoint.save(mngr, 2, items(width=5))
    mngr.wait_until_finished()
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
        checkpoint.restore_latest(checkpoint.manager(str(tmp_path)), abstract(items(width=3)))
    assert info.value.step == 2
    assert "params/encoder/dense/kernel: shape (5, 2) in the checkpoint, (3, 2) in the model" in str(info.value)


def test_an_optimizer_state_of_another_layout_is_a_mismatch_naming_its_arrays(tmp_path):
    """Replicated runs store Adam moments raveled per module, FSDP runs as trees (see optim.Optimizer)."""
    directory = saved(tmp_path, 1.0)
    expected = abstract(items())
    expected["opt_state"] = {"count": expected["opt_state"]["count"], "mu": {"encoder": jax.ShapeDtypeStruct((6,), jnp.float32)}}
    with pytest.raises(checkpoint.CheckpointMismatchError, match="opt_state/mu/encoder: missing from the checkpoint"):
        checkpoint.restore_latest(checkpoint.manager(str(directory)), expected)


def test_damaged_metadata_is_damage_too(tmp_path, caplog):
    directory = saved(tmp_path, 1.0, 2.0)
    damage(directory / "2", name="_METADATA")
    with caplog.at_level(logging.WARNING):
        step, restored = checkpoint.restore_latest(checkpoint.manager(str(directory)), abstract(items()))
    assert step == 1
    np.testing.assert_array_equal(restored["params"]["decoder"]["bias"], 1.0)
    assert str(directory / "2") in caplog.text and "damaged" in caplog.text


@pytest.mark.parametrize("removed", ["opt_state", "meta", "params/_METADATA+_CHECKPOINT_METADATA"])
def test_a_newest_checkpoint_missing_an_item_is_damage_not_another_model(tmp_path, caplog, removed):
    """A partial copy of a workdir (an item's folder or its metadata gone) stopped the run as a config mismatch
    ("item 'opt_state' is missing ... Use the config the checkpoint was trained with, or a fresh --workdir"),
    never trying the intact previous checkpoint."""
    directory = saved(tmp_path, 1.0, 2.0)
    for part in removed.split("+"):
        target = directory / "2" / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            (directory / "2" / part.split("/")[-1]).unlink()
    with caplog.at_level(logging.WARNING):
        step, restored = checkpoint.restore_latest(checkpoint.manager(str(directory)), abstract(items()))
    assert step == 1
    np.testing.assert_array_equal(restored["params"]["decoder"]["bias"], 1.0)
    assert str(directory / "2") in caplog.text


def test_evaluating_reads_past_a_damaged_checkpoint_without_renaming_it(tmp_path):
    """Evaluation is read-only: it falls back as training does, but leaves the workdir as it found it."""
    directory = saved(tmp_path, 1.0, 2.0)
    damage(directory / "2")
    mngr = checkpoint.manager(str(directory), read_only=True)
    step, _ = checkpoint.restore_latest(mngr, abstract(items()), set_aside=False)
    assert step == 1 and (directory / "2").is_dir() and not (directory / "2.damaged").exists()


def test_restore_params_takes_a_workdir_too(tmp_path):
    """config.checkpoint.path=<a --workdir> said "No complete checkpoint" (api.load takes either)."""
    saved(tmp_path / "run" / "checkpoints", 3.0)
    restored = checkpoint.restore_params(str(tmp_path / "run"), abstract(items()))
    np.testing.assert_array_equal(restored["params"]["decoder"]["bias"], 3.0)


def test_restore_params_falls_back_past_a_damaged_newest_checkpoint(tmp_path):
    """api.load and lzn_jax.embed read params this way; a damaged newest checkpoint stopped them although an
    intact one was there."""
    directory = saved(tmp_path, 1.0, 2.0)
    damage(directory / "2")
    restored = checkpoint.restore_params(str(directory), abstract(items()))
    np.testing.assert_array_equal(restored["params"]["decoder"]["bias"], 1.0)
    assert (directory / "2").is_dir()  # read-only: not set aside
