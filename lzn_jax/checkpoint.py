"""Orbax checkpoints of the train state: save periodically, resume from the newest complete one.

Layout (per step, one `Composite`): `params`, `ema_params`, `opt_state`, `meta` (step, rng key data, EMA
update counts, skipped-step counters). A checkpoint converted from the official PyTorch release holds only
`params` and `ema_params`. Orbax writes each step to a temporary directory and renames it when complete, so a
run killed mid-save leaves nothing that `all_steps()` would list.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("params", "ema_params", "opt_state", "meta")
PARAM_ITEMS = ("params", "ema_params")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose arrays do not fit the model the config builds; `step` is the checkpoint's step.
    `missing`: the whole items it lacks; `incomplete`: that is all that differs (damage, not another model)."""

    def __init__(self, message: str, step: int, missing: tuple[str, ...] = (), incomplete: bool = False):
        super().__init__(message)
        self.step, self.missing, self.incomplete = step, missing, incomplete


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none of them could be read: the run stops instead of starting again from step 0."""


def manager(directory: str, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    # A writer removes the temporary directories of saves a killed run left half-written (never listed as steps).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only
    )
    # Naming the handlers lets a fresh process read item metadata before restoring anything.
    handlers = {item: ocp.StandardCheckpointHandler() for item in ITEMS}
    directory = directory if "://" in str(directory) else os.path.abspath(directory)  # abspath mangles gs:// URLs
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, items: dict[str, Any]) -> None:
    """Starts an asynchronous save of `items` as step `step`; raises if Orbax declines it (it declines a step at
    or below its newest, which would otherwise leave the run without the checkpoint it reports)."""
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
    if not mngr.save(step, args=args):
        raise RuntimeError(
            f"Orbax declined to save step {step} in {mngr.directory} (its steps: {mngr.all_steps()}); a step at or "
            "below the newest checkpoint cannot be saved."
        )


def restore_latest(mngr: ocp.CheckpointManager, abstract_items: dict[str, Any], *,
                   set_aside: bool = True) -> Optional[tuple[int, dict]]:  # fmt: skip
    """Restores the newest restorable checkpoint into `abstract_items`' structure and shardings.

    Returns (step, items), or None only when the directory holds no checkpoint at all. A run never restarts from
    step 0 over checkpoints it could not read:
    - a checkpoint whose arrays do not fit `abstract_items` (another architecture, another `mesh.fsdp` layout of
      the Adam state, ...) raises CheckpointMismatchError listing the arrays that differ, without falling back:
      the config differs, and an older checkpoint of the same run would differ the same way;
    - a checkpoint that fits but fails to read (damaged files; tried twice, so a transient storage error is not
      taken for damage) is skipped with a warning saying so, falling back to the previous one; once one restores,
      the damaged newer ones are renamed `<step>.damaged` (`_set_aside`), so the resumed run saves those steps
      again (Orbax saves no step at or below its newest: the run would otherwise end on its damaged checkpoint);
    - a checkpoint missing a whole item (`params/`, `opt_state/` or their metadata gone: a partial copy of a
      workdir) is damage too: it once stopped the run as a config mismatch, advising a fresh --workdir;
    - when every checkpoint fails to read, CheckpointRestoreError names each step tried and why it failed.
    set_aside=False (evaluating: read only) falls back the same way but renames nothing.
    """
    failures = []
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            check_compatible(mngr, step, abstract_items)
        except CheckpointMismatchError as mismatch:
            if not mismatch.incomplete:
                raise
            failures.append(f"step {step}: incomplete: {', '.join(mismatch.missing)}")
            logging.warning("Checkpoint %s is incomplete (%s); falling back to the previous checkpoint.",
                            os.path.join(str(mngr.directory), str(step)), failures[-1])  # fmt: skip
            continue
        try:
            items = _restore_twice(mngr, step, abstract_items)
        except Exception as error:  # noqa: BLE001 -- the arrays fit, so a read failure is damage: try the previous
            failures.append(f"step {step}: {type(error).__name__}: {_one_line(error)}")
            logging.warning(
                "Checkpoint %s is damaged (it fits the model but its arrays fail to read: %s); falling back to the "
                "previous checkpoint.", os.path.join(str(mngr.directory), str(step)), failures[-1],
            )  # fmt: skip
            continue
        if failures:
            logging.warning("Restored step %d, past %d damaged newer checkpoint(s).", step, len(failures))
            if set_aside:
                _set_aside(mngr, [s for s in mngr.all_steps() if s > step])
        return step, items
    if failures:
        raise CheckpointRestoreError(
            f"None of the {len(failures)} checkpoint(s) in {mngr.directory} could be restored, and training does not "
            "silently start again from step 0:\n  " + "\n  ".join(failures) + "\nRepair the storage or move the "
            "damaged checkpoints away; a fresh --workdir starts a new run."
        )
    return None


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
    """Renames each step's directory to `<step>.damaged` (a name Orbax lists as no step; kept for inspection).
    Process 0 renames (Orbax's paths: local or gs://); every process waits for it and re-lists the steps."""
    if jax.process_index() == 0:
        for step in steps:
            target = mngr.directory / f"{step}.damaged"
            for n in range(1, 1000):  # an earlier set-aside copy of the same step stays as it is
                if not target.exists():
                    break
                target = mngr.directory / f"{step}.damaged.{n}"
            (mngr.directory / str(step)).rename(target)
            logging.warning("Set the damaged checkpoint aside as %s; this run saves step %d again.", target, step)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("lzn_jax: damaged checkpoints set aside")
    mngr.reload()


def _restore_twice(mngr, step, abstract_items):
    """`_restore`, retried once: a second failure is taken for damage, a first one may be a transient read error."""
    try:
        return _restore(mngr, step, abstract_items)
    except Exception as error:  # noqa: BLE001
        logging.warning("Reading checkpoint step %d failed (%s: %s); trying once more.", step, type(error).__name__,
                        _one_line(error))  # fmt: skip
        return _restore(mngr, step, abstract_items)


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def restore_params(directory: str, abstract_params: dict[str, Any], step: Optional[int] = None) -> dict[str, Any]:
    """`params` and `ema_params` of the (newest) checkpoint in `directory`, e.g. one made by lzn_jax.convert."""
    if not epath.Path(directory).is_dir():  # local or gs://
        raise FileNotFoundError(f"config.checkpoint.path={directory!r} is not a directory of Orbax checkpoints.")
    if (epath.Path(directory) / "checkpoints").is_dir():  # a --workdir of lzn_jax.main, as api.load takes it
        directory = os.path.join(directory, "checkpoints")
    mngr = manager(directory, read_only=True)
    wanted = {k: abstract_params[k] for k in PARAM_ITEMS}
    if step is not None:
        check_compatible(mngr, step, wanted)
        return _restore(mngr, step, wanted)
    # The newest readable one, as training resumes (api.load and embed once failed on a damaged newest checkpoint
    # with an intact one before it); read-only: nothing is renamed.
    restored = restore_latest(mngr, wanted, set_aside=False)
    if restored is None:
        raise FileNotFoundError(f"No complete checkpoint in {directory!r} (config.checkpoint.path).")
    return restored[1]


def _restore(mngr, step, abstract_items):
    args = ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in abstract_items.items()})
    restored = mngr.restore(step, args=args)
    return {k: restored[k] for k in abstract_items}


def check_compatible(mngr, step: int, abstract_items: dict[str, Any]) -> None:
    """Compares the stored arrays of every item with the expected ones; raises naming every difference.

    Unreadable metadata passes: it is damage, which reading the arrays then reports (see `restore_latest`).
    """
    try:
        stored = mngr.item_metadata(step)
    except Exception:  # noqa: BLE001 -- unreadable metadata is handled as an unreadable checkpoint
        return
    problems, missing = [], []
    for item in abstract_items:
        if stored.get(item) is None:
            problems.append(f"item {item!r} is missing")
            missing.append(item)
            continue
        problems += _tree_differences(item, _shapes(stored[item].tree), _shapes(abstract_items[item]))
    if problems:
        where = os.path.join(str(mngr.directory), str(step))
        listing = "\n  ".join(problems[:40]) + ("\n  ..." if len(problems) > 40 else "")
        raise CheckpointMismatchError(
            f"Checkpoint {where} does not match the state this config builds ({len(problems)} differences):\n"
            f"  {listing}\nUse the config the checkpoint was trained with, or a fresh --workdir.",
            step, tuple(missing), incomplete=len(problems) == len(missing),
        )  # fmt: skip


def _shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves}


def _tree_differences(item, stored: dict, expected: dict) -> list[str]:
    out = [f"{item}/{k}: in the checkpoint, not in the model {stored[k]}" for k in sorted(set(stored) - set(expected))]
    out += [f"{item}/{k}: missing from the checkpoint (model {expected[k]})" for k in sorted(set(expected) - set(stored))]
    out += [
        f"{item}/{k}: shape {stored[k]} in the checkpoint, {expected[k]} in the model"
        for k in sorted(set(stored) & set(expected))
        if stored[k] != expected[k]
    ]
    return out
