"""What TensorBoard shows for a run resumed from a checkpoint older than its last logged step.

    PYTHONPATH=. python experiments/tensorboard_resume.py

A run killed between two checkpoints had logged steps that the resumed run trains and logs again. The resumed run
opens its writers as `train.py` does (`writers.drop_records_after(workdir, restored step)`, then
`writers.create(workdir)`): `metrics.jsonl` loses the killed run's later records, while TensorBoard's event files
cannot be edited and keep both. This script writes such a run (steps 1–10 with loss = step, killed; resumed from
step 5, steps 6–12 with loss = 100 + step), starts TensorBoard on it with each of its loaders
(`--load_fast=true`, the Rust data server TensorBoard uses by default where it is installed; `--load_fast=false`,
the Python loader) and prints the `train/loss` series each one serves. Writes docs/results/tensorboard_resume.json.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from lzn_jax import files, writers  # noqa: E402

KILLED_AT, RESTORED, RESUMED_TO = 10, 5, 12


def write_resumed_run(workdir: str) -> None:
    first = writers.create(workdir)
    for step in range(1, KILLED_AT + 1):
        first.write_scalars(step, {"train/loss": float(step)})
    first.flush()  # the killed run's writes reached the files; it never closes its writers
    time.sleep(1.1)  # a new event file name (TensorBoard's names carry the second)
    writers.drop_records_after(workdir, RESTORED)
    second = writers.create(workdir)
    for step in range(RESTORED + 1, RESUMED_TO + 1):
        second.write_scalars(step, {"train/loss": 100.0 + step})
    second.close()


def served_series(logdir: str, load_fast: str, timeout_s: float = 120) -> list[list[float]]:
    """[[step, value], ...] of train/loss as TensorBoard's HTTP API serves it with `--load_fast=load_fast`."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    command = [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", logdir, "--port", str(port),
               "--host", "localhost", f"--load_fast={load_fast}", "--reload_interval=1"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://localhost:{port}/data/plugin/scalars/scalars?run=.&tag=train/loss"
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            time.sleep(2)
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    points = json.load(response)
            except OSError:
                continue  # not serving yet, or the run not loaded yet
            if len(points) >= RESUMED_TO:
                return [[step, value] for _, step, value in points]
        raise TimeoutError(f"TensorBoard (--load_fast={load_fast}) served no train/loss in {timeout_s} s")
    finally:
        server.terminate()
        server.wait()


def main():
    with tempfile.TemporaryDirectory() as workdir:
        write_resumed_run(workdir)
        jsonl = [[r["step"], r["train/loss"]] for r in files.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]
        served = {f"load_fast={mode}": served_series(workdir, mode) for mode in ("true", "false")}
    import tensorboard

    numbers = {"tensorboard": tensorboard.__version__, "killed_at": KILLED_AT, "restored": RESTORED,
               "resumed_to": RESUMED_TO, "metrics_jsonl": jsonl, **served}  # fmt: skip
    for name, series in [("metrics.jsonl", jsonl), *served.items()]:
        steps = [step for step, _ in series]
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        print(f"{name}: {len(series)} points, steps repeated: {repeated or 'none'}; {series}")
    results.write("tensorboard_resume", numbers)


if __name__ == "__main__":
    main()
