"""experiments/device_check.sh --tiny: the GPU check's whole code path, on a CPU, with TensorFlow unimportable.

Bugs these catch: the script that must run in one go on a bare accelerator machine importing TensorFlow (not
installed there) through lzn_jax.train or the writers, or failing for one paper model after the others ran.
"""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_runs_tiny_on_cpu_without_tensorflow():
    import sys

    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    result = subprocess.run(["bash", str(REPO / "experiments" / "device_check.sh"), "--tiny"], env=env,
                            capture_output=True, text=True, timeout=3600, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    out = result.stdout
    assert "kernel: 64 rows x 256 anchors" in out and "FAILED" not in out, out
    for name in ("gen_cifar10", "repr_imagenet"):
        for dtype in ("float32", "bfloat16"):
            assert f"{name} {dtype}: batch 2," in out and "images/s" in out, out
    assert out.strip().endswith("done")
