"""Where the numbers of the README and docs/ come from: each script writes its output to docs/results/<name>.json.

A record holds the exact command, the commit it started at (with "+dirty" when tracked files had changes), the UTC date,
the machine's load average at the end (the development machine's 2 cores are shared, so timings taken under
load are slower than on a quiet machine) and the script's own numbers.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


COMMIT = _commit()  # taken when the script starts: the code that produced the numbers


def write(name: str, numbers: dict) -> pathlib.Path:
    """Writes docs/results/<name>.json (command, commit, date, machine, numbers) and returns its path."""
    record = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "commit": COMMIT,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15_min": list(os.getloadavg()),
                    "python": platform.python_version()},  # fmt: skip
        "results": numbers,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return path


def load_config(name: str, arg=None):
    """configs/<name>.py's `get_config(arg)`, loaded from its path as `python -m lzn_jax.main --config` does."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def final_eval_metrics(workdir: str) -> dict:
    """The eval/ metrics of a run's metrics.jsonl, the last value of each."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            out.update({k: v for k, v in json.loads(line).items() if k.startswith("eval/")})
    return out
