"""Measured numerics: step parity with the official trainers, and bfloat16 against float32.

    PYTHONPATH=.:tests python experiments/numerics_report.py [--part bf16|steps] [--dtype float64|float32]
        [--match case2]  >> docs/results/numerics.txt

(the options run one part, dtype or reference file at a time, so slow parts can run side by side).

1. For every `step_*.npz` in the reference folder ($LZN_REFERENCE_DIR, see tests/conftest.py) and for float64
   (jax_enable_x64) and float32: the error of each kind of quantity nearest its tolerance in
   `tests/test_reference_steps.py` (which this reuses, so the numbers are the test's).
2. For one train step of every task of `tests/support.py`'s `step_configs` (tests/test_train.py's bfloat16 test): the float32 and bfloat16 losses from the same
   params and draws, and their relative difference.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys

import jax
import numpy as np

import conftest
import support
import test_reference_steps
import test_train


def _header() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "lzn_jax", "tests"], capture_output=True, text=True).stdout
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# commit {commit}{' (with uncommitted changes)' if dirty.strip() else ''}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
          f"{jax.devices()[0].platform}")  # fmt: skip


def step_parity(dtypes, match) -> None:
    print("\n## Official steps: per file and dtype, the comparison of each kind nearest its tolerance")
    print(f"{'file':<24} {'dtype':<8} {'kind':<16} {'error':>10} {'tolerance':>10}")
    for path in [p for p in conftest.reference_files("step_*.npz") if match in os.path.basename(p)]:
        for dtype in dtypes:
            with jax.enable_x64(dtype == "float64"):
                worst = test_reference_steps.run_and_check(path, dtype)
            for kind, (err, tol) in sorted(worst.items()):
                print(f"{os.path.basename(path):<24} {dtype:<8} {kind:<16} {err:>10.2e} {tol:>10.1e}", flush=True)


def bfloat16_steps() -> None:
    print("\n## The second train step, float32 vs bfloat16 networks (same params and draws; tests/test_train.py's "
          "batch and step_pair)")
    print(f"{'task':<24} {'float32 loss':>14} {'bfloat16 loss':>14} {'absolute':>10} {'relative':>10} {'bound':>10}")
    for name, config in support.step_configs().items():
        row(name, config, support.step_batch(config))
    # The representation loss at a second pair of views (noisier view 2: a loss near 1 instead of near 0): its
    # bf16 error stays an absolute ~1e-2, which is why the test's bound has an absolute term.
    config = support.step_configs()["representation"]
    batch = support.step_batch(config)
    noise = np.random.default_rng(1).standard_normal(batch["image"].shape)
    batch["image2"] = np.clip(batch["image"] + 0.5 * noise, -1, 1).astype(np.float32)
    row("representation, σ 0.5", config, batch)


def row(name, config, batch) -> None:
    high, low = (float(m["loss"]) for m in test_train.step_metrics(config, batch))
    bound = test_train.BF16_LOSS_RTOL * abs(high) + test_train.BF16_LOSS_ATOL
    print(f"{name:<24} {high:>14.6f} {low:>14.6f} {abs(low - high):>10.2e} {abs(low - high) / abs(high):>10.2e} "
          f"{bound:>10.2e}", flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("bf16", "steps"), action="append")
    parser.add_argument("--dtype", choices=("float64", "float32"), action="append")
    parser.add_argument("--match", default="", help="only reference files whose name contains this")
    args = parser.parse_args()
    _header()
    if "bf16" in (args.part or ["bf16"]):
        bfloat16_steps()
    if "steps" in (args.part or ["steps"]):
        step_parity(args.dtype or ("float64", "float32"), args.match)
