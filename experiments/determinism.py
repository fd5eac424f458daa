"""What "the same config and seed give the same run" means on CPU: repeats, and the number of cores.

    python experiments/determinism.py

Runs the README's training command (`python -m lzn_jax.main --config=configs/digits_joint.py`) for `--steps`
steps, logging every step, `--repeats` times on each CPU set of `--cpus` (the process is pinned to those cores,
as `taskset` would), and hashes the first `--batches` train batches of the same config on each set. Reports:

- whether repeats on the same cores give bit-identical metrics (every value of metrics.jsonl but the timings);
- whether the batches depend on the cores (tf.data runs one map call per core it may use);
- where runs on different core sets first differ, and by how much at the last step.

Needs as many cores as the largest set. Writes docs/results/determinism.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

CONFIG = "configs/digits_joint.py"
TIMINGS = ("steps_per_sec", "uptime")


def run_main(cpus: tuple[int, ...], steps: int, workdir: str) -> dict[int, dict]:
    """{step: metrics} of one `python -m lzn_jax.main` run pinned to `cpus` (evaluators at the last step only)."""
    never = steps + 1
    flags = [f"--config.num_train_steps={steps}", "--config.log_every_steps=1", f"--config.checkpoint_every_steps={never}"]
    flags += [f"--config.evals.{name}.every_steps={never}" for name in ("class_accuracy", "samples", "sample_accuracy")]
    command = [sys.executable, "-m", "lzn_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", *flags]
    subprocess.run(command, cwd=results.ROOT, check=True, capture_output=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    metrics: dict[int, dict] = {}
    for line in pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = {k: v for k, v in record.items() if k != "step" and k not in TIMINGS}
        metrics.setdefault(record["step"], {}).update(values)
    return metrics


def batch_hash(num_batches: int) -> str:
    """sha256 of the first train batches of CONFIG through `lzn_jax.data.train_iterator` (run in a child)."""
    from configs import digits_joint  # noqa: PLC0415  (the child has the repository on its path)
    from lzn_jax import data  # noqa: PLC0415

    config = digits_joint.get_config()
    batches = data.train_iterator(config.data, batch_size=config.batch_size, seed=config.seed)
    digest = hashlib.sha256()
    for _ in range(num_batches):
        batch = next(batches)
        for key in sorted(batch):
            digest.update(np.ascontiguousarray(batch[key]).tobytes())
    batches.close()
    return digest.hexdigest()[:16]


def pinned_batch_hash(cpus: tuple[int, ...], num_batches: int) -> str:
    command = [sys.executable, __file__, f"--hash_batches={num_batches}"]
    env = {**os.environ, "PYTHONPATH": str(results.ROOT)}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def compare(a: dict[int, dict], b: dict[int, dict]) -> dict:
    """First step whose metrics differ, and the largest relative difference of each metric at the last step."""
    first = next((step for step in sorted(a) if a[step] != b.get(step)), None)
    last = max(a)
    relative = {k: abs(a[last][k] - b[last][k]) / max(abs(a[last][k]), 1e-30) for k in a[last] if k in b[last]}
    return {"first_differing_step": first, "relative_difference_at_last_step": {k: v for k, v in relative.items() if v}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpus", default="0;0,1", help="core sets separated by ';'")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--hash_batches", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="determinism", help="docs/results/<out>.json; '' writes nothing")
    args = parser.parse_args(argv)
    if args.hash_batches:
        print(batch_hash(args.hash_batches))
        return {}
    core_sets = [tuple(int(c) for c in group.split(",")) for group in args.cpus.split(";")]
    missing = sorted(set(sum(core_sets, ())) - os.sched_getaffinity(0))
    if missing:
        raise SystemExit(f"--cpus names cores {missing} this process may not use ({sorted(os.sched_getaffinity(0))}).")
    runs, numbers = {}, {"config": CONFIG, "steps": args.steps, "per_core_set": {}}
    for cpus in core_sets:
        name = ",".join(map(str, cpus))
        repeats = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as workdir:
                repeats.append(run_main(cpus, args.steps, os.path.join(workdir, "run")))
        runs[name] = repeats[0]
        numbers["per_core_set"][name] = {
            "repeats_bit_identical": all(r == repeats[0] for r in repeats[1:]),
            "batch_hash": pinned_batch_hash(cpus, args.batches),
            "last_step_metrics": repeats[0][args.steps],
        }
        print(name, json.dumps(numbers["per_core_set"][name]), flush=True)
    names = list(runs)
    numbers["across_core_sets"] = {f"{a} vs {b}": compare(runs[a], runs[b]) for a in names for b in names if a < b}
    print(json.dumps(numbers["across_core_sets"], indent=1))
    if args.out:
        results.write(args.out, numbers)
    return numbers


if __name__ == "__main__":
    main()
