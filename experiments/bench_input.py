"""The train input pipeline with and without tf.data's autotuner: how long closing a live iterator takes, and
images per second.

    PYTHONPATH=. python experiments/bench_input.py --config=digits_gen

A training run closes its train iterator when it ends (and when it stops on a signal). With `data.autotune`
on, tf.data runs a tuning thread whose sleep between rounds doubles (up to a minute); closing the iterator
waited for that thread to wake. Each trial takes two batches, waits `--idle` seconds (a run's compile and
steps), then closes the iterator (the wait depends on where the tuning thread's sleep is: one trial per idle
time); then `--batches` batches are timed after 5 of warm-up. The iterators are
built by `lzn_jax.data.train_iterator`, as `lzn_jax.train` builds them. Writes docs/results/bench_input.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from lzn_jax import data  # noqa: E402


def close_seconds(data_cfg, batch_size: int, idle: float) -> float:
    """Wall seconds of closing a train iterator that was built, read twice and left idle for `idle` s."""
    batches = data.train_iterator(data_cfg, batch_size=batch_size, seed=0)
    next(batches), next(batches)
    time.sleep(idle)
    start = time.perf_counter()
    batches.close()
    return time.perf_counter() - start


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
    parser.add_argument("--config", default="digits_gen", help="configs/<name>.py, optionally name:arg")
    parser.add_argument("--idle", default="1,3,5,7,9,11,13,15,20,25",
                        help="comma-separated seconds between the reads and the close, one trial each")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--out", default="bench_input", help="docs/results/<out>.json; '' writes nothing")
    args = parser.parse_args(argv)
    name, _, arg = args.config.partition(":")
    config = results.load_config(name, arg or None)
    idle = [float(s) for s in args.idle.split(",") if s]
    numbers = {"config": args.config, "batch_size": config.batch_size, "cpus_usable": len(os.sched_getaffinity(0))}
    for autotune in (True, False):
        config.data.autotune = autotune
        trials = {f"{s:g}": round(close_seconds(config.data, config.batch_size, s), 3) for s in idle}
        rate = images_per_second(config.data, config.batch_size, args.batches)
        numbers[f"autotune={autotune}"] = {
            "close_seconds_after_idle": trials, "close_seconds_total": round(sum(trials.values()), 3),
            "images_per_second": round(rate, 1),
        }  # fmt: skip
        print(f"data.autotune={autotune}: close after idle {trials} s (total {sum(trials.values()):.2f} s); "
              f"{rate:,.0f} images/s", flush=True)  # fmt: skip
    if args.out:
        results.write(args.out, numbers)
    return numbers


if __name__ == "__main__":
    main()
