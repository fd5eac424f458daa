"""Shared test fixtures: where the golden reference vectors live."""

import glob
import os
import pathlib


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_BUNDLED = REPO_ROOT / "tests" / "reference_data"  # a copy of seed 0, for clones without ../shared


def reference_dir() -> pathlib.Path:
    """`$LZN_REFERENCE_DIR`, else `../shared/reference` beside the checkout, else the bundled copy."""
    env = os.environ.get("LZN_REFERENCE_DIR")
    if env:
        path = pathlib.Path(env)
        if not path.is_dir():
            raise FileNotFoundError(f"LZN_REFERENCE_DIR={env!r} is not a directory.")
        return path
    shared = REPO_ROOT.parent / "shared" / "reference"
    return shared if shared.is_dir() else _BUNDLED


def reference_files(pattern: str) -> list[str]:
    """Every file matching `pattern` (e.g. 'latent_flows_*.npz') in the reference dir; fails if there is none."""
    files = sorted(glob.glob(str(reference_dir() / pattern)))
    if not files:
        raise FileNotFoundError(f"No {pattern} in {reference_dir()}: the reference tests would check nothing.")
    return files


def pytest_configure(config):
    """The one registration of the `slow` marker: `pytest -m "not slow" tests` is the fast tier developers run."""
    config.addinivalue_line(
        "markers",
        "slow: subprocess training runs, the notebook, multi-process, multi-device and learning runs (> ~15 s); "
        'deselect with -m "not slow"',
    )


def pytest_generate_tests(metafunc):
    """Parametrises `latent_flows_file` / `ncsnpp_small_file` / `step_file` arguments over every matching
    reference file."""
    patterns = (("latent_flows_file", "latent_flows_*.npz"), ("ncsnpp_small_file", "ncsnpp_small_*.npz"),
                ("step_file", "step_*.npz"))  # fmt: skip
    for arg, pattern in patterns:
        if arg in metafunc.fixturenames:
            files = reference_files(pattern)
            metafunc.parametrize(arg, files, ids=[os.path.basename(f) for f in files])


def pytest_ignore_collect(collection_path, config):
    """tests/multidevice/ needs 8 devices from process start: it runs via tests/test_multidevice.py."""
    if "multidevice" in collection_path.parts and os.environ.get("LZN_MULTIDEVICE") != "1":
        return True
    return None

