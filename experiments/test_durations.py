r"""Where a test-suite run spends its time: per-file sums of pytest's `--durations=0` report.

    python -m pytest -q -n 2 --dist loadfile --durations=0 tests > suite.log
    python experiments/test_durations.py suite.log [--top 20]

Prints the sum of setup + call + teardown seconds per test file (worker seconds: with `-n 2` the wall time is
about half of the total when both workers stay busy) and the longest single phases. Used for
docs/results/test_times.txt (issue 14: the suite's time).
"""

from __future__ import annotations

import argparse
import collections
import re

LINE = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(\S+)")


def parse(path: str) -> list[tuple[float, str, str]]:
    """[(seconds, phase, node id)] of every duration line of a pytest log."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [(float(m[1]), m[2], m[3]) for m in map(LINE.match, f) if m]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--top", type=int, default=20, help="how many of the longest phases to list")
    args = parser.parse_args(argv)
    rows = parse(args.log)
    per_file = collections.Counter()
    for seconds, _, node in rows:
        per_file[node.split("::")[0]] += seconds
    print(f"total worker seconds: {sum(per_file.values()):.0f} over {len(per_file)} files")
    for name, seconds in per_file.most_common():
        if seconds >= 10:
            print(f"{seconds:8.0f}  {name}")
    print(f"\nthe {args.top} longest phases:")
    for seconds, phase, node in sorted(rows, reverse=True)[: args.top]:
        print(f"{seconds:8.0f}  {phase:8s} {node}")


if __name__ == "__main__":
    main()
