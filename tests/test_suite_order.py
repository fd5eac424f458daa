"""conftest.py's scheduling list names real files: a renamed long file would silently start wherever the
alphabet puts it, and the full suite would end with one xdist worker running it alone for minutes."""

import os
import pathlib
import subprocess
import sys

from conftest import LONGEST_FILES_FIRST, TOO_SLOW_FOR_CI, UNVERIFIED, _file_rank, is_unverified, matches

HERE = pathlib.Path(__file__).resolve().parent


def entry_file(entry: str) -> str:
    """The test file an UNVERIFIED / TOO_SLOW_FOR_CI entry starts with ("test_x.py*frag" -> "test_x.py")."""
    return entry.split("*")[0].split("::")[0]


def test_every_longest_file_exists_once():
    assert len(set(LONGEST_FILES_FIRST)) == len(LONGEST_FILES_FIRST)
    files = LONGEST_FILES_FIRST + tuple(entry_file(entry) for entry in UNVERIFIED + TOO_SLOW_FOR_CI)
    missing = [name for name in files if not (HERE / name).is_file()]
    assert not missing, f"conftest.py names test files that do not exist: {missing}"


def test_the_longest_files_rank_first_in_their_order():
    class Item:
        def __init__(self, name):
            self.fspath = HERE / name

    ranks = [_file_rank(Item(name)) for name in LONGEST_FILES_FIRST]
    assert ranks == sorted(ranks) == list(range(len(LONGEST_FILES_FIRST)))
    assert _file_rank(Item("test_optim.py")) == len(LONGEST_FILES_FIRST)  # a short file: after all of them


def collected(files, *, skip_unverified: bool) -> list[str]:
    """Node ids pytest collects from `files`, as CI (`LZN_SKIP_UNVERIFIED=1`) or `pytest tests` would."""
    env = {**os.environ, "LZN_SKIP_UNVERIFIED": "1" if skip_unverified else "0"}
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files]
    out = subprocess.run(command, cwd=HERE.parent, env=env, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "::" in line]


def test_ci_leaves_out_only_what_the_entries_name_and_runs_every_paper_config():
    """Each UNVERIFIED / TOO_SLOW_FOR_CI entry deselects at least one test under CI's `LZN_SKIP_UNVERIFIED=1`, and
    nothing else: a renamed parameter id would silently put a slow test into CI or drop one from it. Both lists are
    empty since stop 38, so CI runs all twelve runs of `main` in test_paper_configs (six paper configs, replicated
    and FSDP), as the README says."""
    entries = UNVERIFIED + TOO_SLOW_FOR_CI
    files = sorted({str(HERE / entry_file(entry)) for entry in entries} | {str(HERE / "test_paper_configs.py")})
    everything = collected(files, skip_unverified=False)
    in_ci = collected(files, skip_unverified=True)
    for entry in entries:
        assert any(matches(entry, node) for node in everything), entry
    assert in_ci == [node for node in everything if not is_unverified(node)]
    paper_configs = [node for node in in_ci if "test_paper_configs.py" in node]
    assert len(paper_configs) == 12, paper_configs
