r"""Shows that the learning tests can fail: the tiny runs of tests/test_learning.py, each broken one way.

    python experiments/learning_controls.py            # about 15 minutes on one CPU core

tests/test_learning.py asserts that a tiny digits_joint run classifies held-out digits (eval/accuracy ≥
JOINT_ACCURACY_MIN) and generates digits a pixel classifier recognises (eval/sample_accuracy_euler ≥
SAMPLE_ACCURACY_MIN), and that a tiny digits_repr run's probe beats an untrained encoder's by REPR_MARGIN. This
script trains the same configs (the test module's own `joint_config` / `repr_config`, through
`train.train_and_evaluate`) intact and with one defect each, and prints every score beside the test's threshold:

- `no_label_loss`: `loss.label=0` — nothing pulls an image's latent into its label's zone (a broken zoning loss);
- `frozen_encoder`: `module_steps.encoder=0` — the image encoder never updates;
- `swapped_labels`: every training image carries its neighbour's label (labels rolled by one within the train
  split; the test split is untouched), so labels and images are unrelated while the label marginals stay;
- for the representation test, `frozen_encoder` is exactly the test's untrained baseline, so it reaches a margin
  of 0 by construction: the control printed is the trained run's margin against it.

A defect "breaks the test" when its score is below the threshold. Output: docs/results/learning_controls.json.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "experiments")]

import results  # noqa: E402  (experiments/results.py)
import test_learning as tl  # noqa: E402  (the tests' own config builders and thresholds)

from lzn_jax.data import digits  # noqa: E402

JOINT_CHECKS = {"eval/accuracy": tl.JOINT_ACCURACY_MIN, "eval/sample_accuracy_euler": tl.SAMPLE_ACCURACY_MIN}


@contextlib.contextmanager
def swapped_train_labels():
    """Within this block the digits source gives each training image its neighbour's label (np.roll by 1)."""
    original = digits.DigitsSource.__init__

    def init(self, cfg):
        original(self, cfg)
        images, labels = self._arrays["train"]
        self._arrays["train"] = (images, np.roll(labels, 1))

    digits.DigitsSource.__init__ = init
    try:
        yield
    finally:
        digits.DigitsSource.__init__ = original


def joint_controls(workdir: pathlib.Path) -> dict:
    """{variant: {metric: value}} for the intact tiny joint run and its three defects."""
    variants = {
        "intact": (tl.joint_config(), contextlib.nullcontext()),
        "no_label_loss": (tl.joint_config(**{"loss.label": 0.0}), contextlib.nullcontext()),
        "frozen_encoder": (tl.joint_config(**{"module_steps.encoder": 0}), contextlib.nullcontext()),
        "swapped_labels": (tl.joint_config(), swapped_train_labels()),
    }
    out = {}
    for name, (config, context) in variants.items():
        with context:
            scalars = tl.run(config, workdir / f"joint_{name}")
        out[name] = {key: float(scalars[key]) for key in JOINT_CHECKS}
        print(f"joint {name:15s} " + "  ".join(f"{k}={v:.3f}" for k, v in out[name].items()), flush=True)
    return out


def repr_controls(workdir: pathlib.Path) -> dict:
    """The trained and untrained (frozen at init) probe accuracies and the trained run's margin."""
    trained = tl.run(tl.repr_config(), workdir / "repr_trained")
    untrained = tl.run(tl.repr_config(steps=1, **{"module_steps.encoder": 0}), workdir / "repr_untrained")
    out = {}
    for key in ("eval/linear_probe_frozen_accuracy", "eval/linear_probe_frozen_accuracy_head"):
        out[key] = {"trained": float(trained[key]), "untrained": float(untrained[key]),
                    "margin": float(trained[key] - untrained[key])}  # fmt: skip
        print(f"repr {key}: {out[key]}", flush=True)
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        joint = joint_controls(pathlib.Path(tmp))
        representation = repr_controls(pathlib.Path(tmp))
    breaks = {name: {key: value < JOINT_CHECKS[key] for key, value in scores.items()} for name, scores in joint.items()}
    print("\nthresholds:", JOINT_CHECKS, "repr margin:", tl.REPR_MARGIN)
    for name, broken in breaks.items():
        print(f"{name:15s} below a threshold: {broken}")
    results.write("learning_controls", {
        "thresholds": {**JOINT_CHECKS, "repr_margin": tl.REPR_MARGIN},
        "joint": joint, "joint_below_threshold": breaks, "representation": representation,
        "steps": {"joint": tl.JOINT_STEPS, "repr": tl.REPR_STEPS},
    })  # fmt: skip


if __name__ == "__main__":
    main()
