r"""Trains the digits configs and prints the numbers the README reports (CPU, about an hour on 2 cores).

    python experiments/digits_report.py --workdir=workdirs/report             # all four
    python experiments/digits_report.py --workdir=workdirs/report --only digits_joint

- digits_joint: test accuracy of image → latent → label (deterministic latents and std-1 prior noise, each
  without and with class weights), and how recognisable its label-conditional samples are to a separately
  trained classifier (logistic regression on pixels).
- digits_repr vs digits_simclr: linear-probe accuracy of LZN and SimCLR features (same encoder, views, budget)
  against the raw-pixel probe.
- digits_gen: sample and reconstruction statistics.
A finished run is not retrained (its workdir resumes at its last step and its metrics are read again).
Each config's final metrics go to docs/results/<config>.json (command, commit, date): the README's digits
numbers are read from those files.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lzn_jax import train  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
import results  # noqa: E402  (experiments/results.py)

CONFIGS = ("digits_joint", "digits_repr", "digits_simclr", "digits_gen")


load_config = results.load_config
final_metrics = results.final_eval_metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdirs/report")
    parser.add_argument("--only", nargs="+", default=CONFIGS, choices=CONFIGS)
    args = parser.parse_args()
    for name in args.only:
        config = load_config(name)
        workdir = os.path.join(args.workdir, name)
        start = time.perf_counter()
        train.train_and_evaluate(config, workdir)
        minutes = (time.perf_counter() - start) / 60
        metrics = final_metrics(workdir)
        print(f"\n== {name}: {config.num_train_steps} steps in {minutes:.1f} min (this run)")
        for key in sorted(metrics):
            print(f"   {key:55s} {metrics[key]:.4f}")
        sys.stdout.flush()
        results.write(name, {"num_train_steps": config.num_train_steps, "minutes_this_invocation": minutes,
                             "final_eval_metrics": metrics})  # fmt: skip


if __name__ == "__main__":
    main()
