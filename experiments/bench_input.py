"""Training runs and the train input pipeline with and without tf.data's autotuner (`data.autotune`).

    PYTHONPATH=. python experiments/bench_input.py --config=digits_gen

A training run closes its train iterator when it ends (and when it stops on a signal). With `data.autotune`
on, tf.data runs a tuning thread that sleeps between rounds (10 ms doubling to 60 s); closing a live iterator
could wait for it to wake, with nothing else to do. Measured here on the product's road:

- `runs`: short training runs through `lzn_jax.train.train_and_evaluate` (the config at experiments/claims.py's
  quick budget: `:runlocal` networks at the digits' 8 px, `--steps` steps, no evaluators), one warm-up run, then
  `--repeats` runs per setting, the settings alternating; wall and CPU seconds of each (each run compiles its
  programs; set JAX_COMPILATION_CACHE_DIR to load them instead). Pin the process to one core (taskset) and wall
  minus CPU is time spent waiting.
- `images_per_second`: `--batches` train batches from `lzn_jax.data.train_iterator` after 5 of warm-up.

Writes docs/results/bench_input.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import claims  # noqa: E402  (its quick budget: the smallest configs that run the whole road)
import results  # noqa: E402

from lzn_jax import data, train  # noqa: E402


def run_seconds(config, workdir: str) -> dict:
    """Wall and CPU seconds of one `train.train_and_evaluate(config, workdir)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    train.train_and_evaluate(config, workdir)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": round(wall, 2), "cpu": round(cpu, 2), "waiting": round(wall - cpu, 2)}


def images_per_second(data_cfg, batch_size: int, num_batches: int) -> float:
    batches = data.train_iterator(data_cfg, batch_size=batch_size, seed=1)
    for _ in range(5):
        next(batches)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    seconds = time.perf_counter() - start
    batches.close()
    return num_batches * batch_size / seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="digits_gen", help="configs/<name>.py")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--out", default="bench_input", help="docs/results/<out>.json; '' writes nothing")
    args = parser.parse_args(argv)
    settings = (True, False)
    config = claims.make_config(args.config, budget=claims.QUICK, seed=0, steps=args.steps)
    numbers = {"config": f"{args.config} at claims.QUICK", "steps": args.steps, "batch_size": config.batch_size,
               "cpus_usable": len(os.sched_getaffinity(0)), "runs": {f"autotune={s}": [] for s in settings}}  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        run_seconds(config, os.path.join(root, "warm-up"))
        for repeat in range(args.repeats):
            for autotune in settings:
                config.data.autotune = autotune
                seconds = run_seconds(config, os.path.join(root, f"{autotune}-{repeat}"))
                numbers["runs"][f"autotune={autotune}"].append(seconds)
                print(f"data.autotune={autotune}: run {repeat}: {seconds}", flush=True)
    for autotune in settings:
        config.data.autotune = autotune
        runs = numbers["runs"][f"autotune={autotune}"]
        rate = images_per_second(config.data, config.batch_size, args.batches)
        numbers[f"autotune={autotune}"] = {
            "mean_wall_seconds": round(sum(r["wall"] for r in runs) / len(runs), 2),
            "mean_waiting_seconds": round(sum(r["waiting"] for r in runs) / len(runs), 2),
            "images_per_second": round(rate, 1),
        }  # fmt: skip
        print(f"data.autotune={autotune}: {numbers[f'autotune={autotune}']}", flush=True)
    if args.out:
        results.write(args.out, numbers)
    return numbers


if __name__ == "__main__":
    main()
