"""A float32 overflow case (docs/zoning.md): anchors of size 1e16 gave a finite, wrong latent row; now NaN rows.

    python experiments/fuzz_case_huge_anchors.py > docs/results/fuzz_case_huge_anchors.txt

Replays the case `tests/test_fuzz.py::test_huge_values_give_nan_or_the_float64_answer` drew with random draws
(seed=60927, scale=1e16, which='anchors', solver='dpm_solver++') through that test's own `jitted_flows`, and prints
the float32 and float64 latents of the anchors. The contract: each float32 row is NaN or the float64 answer.
Before the fix (commit e644ccd's output) row 0 came out finite and 1.35e6× too large.
"""

import datetime
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_fuzz import jitted_flows  # noqa: E402

import results  # noqa: E402  (experiments/results.py: the commit the script started at)


def main():
    rng = np.random.default_rng(60927)
    anchors, latents = rng.normal(size=(4, 3)) * 1e16, rng.normal(size=(3, 3))
    f32 = np.asarray(jitted_flows("dpm_solver++")(anchors.astype(np.float32), latents.astype(np.float32))[0])
    with jax.enable_x64(True):
        f64 = np.asarray(jitted_flows("dpm_solver++", x64=True)(anchors, latents)[0])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"# python experiments/fuzz_case_huge_anchors.py, commit {results.COMMIT}, {date}")
    print("latents of the anchors, float32:\n", f32)
    print("float64:\n", f64)
    rows_nan = np.isnan(f32).any(axis=1)
    ratio = np.max(np.abs(f32[~rows_nan]), axis=1) / np.max(np.abs(f64[~rows_nan]), axis=1)
    print("NaN rows in float32:", int(rows_nan.sum()), "| largest |float32| / |float64| per finite row:", ratio)


if __name__ == "__main__":
    main()
