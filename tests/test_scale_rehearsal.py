"""experiments/scale_rehearsal.py: ahead-of-time compiles of a config's real train step and evaluators.

Bugs these catch: a rehearsal that compiles something other than what `main` runs (the state, shardings and
step come from `train.build` / `make_train_step`, so an FSDP layout that `main` cannot build fails here too), a
JSON report missing the fields docs/scaling.md is built from, an FSDP layout that does not shrink the state.
"""

import functools
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "scale_rehearsal.py"
# digits_joint:runlocal with its NCSN++ trunks cut to one 8-channel level on 8x8 digits: the rehearsal's road
# (setup, both layouts, the evaluators) is the same at a fraction of the compile time (240 s -> 99 s, stop 16).
TINY = [f"--config.{net}.{key}={value}" for net in ("encoder", "decoder") for key, value in (("nf", 8), ("ch_mult", "(1,)"))]
TINY += ["--config.data.image_size=8"]


@functools.cache
def load_script():
    """The script as a module, loaded once per process (its absl flags can be defined only once)."""
    spec = importlib.util.spec_from_file_location("scale_rehearsal", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rehearse(*args, devices=8):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # the script sets the device count itself
    result = subprocess.run([sys.executable, str(SCRIPT), f"--devices={devices}", "--json", *args], env=env,
                            capture_output=True, text=True, timeout=3600, cwd=REPO)  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"--json must print exactly one line: {result.stdout[-2000:]}"
    return json.loads(lines[0])


@pytest.mark.slow
def test_rehearsal_of_a_small_config_on_8_cpu_devices():
    report = rehearse("--config=configs/digits_joint.py:runlocal", "--config.evals.class_accuracy.every_steps=3", *TINY)
    assert report["devices"] == 8 and report["platform"] == "cpu" and report["topology"] is None
    assert report["global_batch"] == 8 and report["hbm_bytes_per_device"] == 40 * 2**30
    assert set(report["layouts"]) == {"replicated", "fsdp"}
    for layout in report["layouts"].values():
        assert layout["peak_bytes_per_device"] > 0 and layout["flops_per_step"] > 0 and layout["fits"]
        assert layout["collective_bytes"] > 0  # the gradient all-reduce, at least
        assert set(layout["evaluators"]) == {"class_accuracy"} and layout["evaluators"]["class_accuracy"] > 0
        assert all(seconds > 0 for seconds in layout["implied_step_seconds"].values())
    replicated, fsdp = report["layouts"]["replicated"], report["layouts"]["fsdp"]
    assert fsdp["state_bytes_per_device"] < 0.5 * replicated["state_bytes_per_device"]
    assert report["commit"] and report["date"] and report["command"].startswith("python experiments/scale_rehearsal.py")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install .[tpu])")
def test_rehearsal_compiles_for_a_tpu_slice_without_a_tpu():
    report = rehearse("--config=configs/digits_joint.py:runlocal", "--topology=v5e:2x4", "--layouts=fsdp", *TINY)
    assert report["platform"] == "tpu" and report["topology"] == "v5e:2x4" and report["devices"] == 8
    assert report["hbm_bytes_per_device"] == 16 * 2**30
    fsdp = report["layouts"]["fsdp"]
    assert fsdp["peak_bytes_per_device"] > 0 and fsdp["flops_per_step"] > 0 and fsdp["fits"]


def test_topology_without_libtpu_fails_with_the_install_hint():
    module = load_script()
    if importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed here")
    with pytest.raises(SystemExit, match=r"pip install 'lzn_jax\[tpu\]'"):
        module.tpu_devices("v5e:2x4")


def test_a_compiled_program_that_cannot_be_printed_keeps_its_memory_and_flops():
    """Bug this catches: libtpu 0.0.52 compiled the 128-chip ResNet-50 step in 22 minutes and then failed to print
    it ("RET_CHECK ... async-update instruction"); the collective-bytes count raised and the run lost every number."""
    import jax

    class Unprintable:  # what such a compiled TPU program answers
        def memory_analysis(self):
            return types.SimpleNamespace(argument_size_in_bytes=10, output_size_in_bytes=6, alias_size_in_bytes=4,
                                         temp_size_in_bytes=100)  # fmt: skip

        def cost_analysis(self):
            return {"flops": 7.0}

        def as_text(self):
            raise jax.errors.JaxRuntimeError("INTERNAL: RET_CHECK failure async-update instruction")

    result = load_script()._measure(Unprintable(), 12.34)
    assert result == dict(peak_bytes_per_device=112, flops_per_step=7.0, compile_seconds=12.3, collective_bytes=None)
