"""conftest.py's scheduling list names real files: a renamed long file would silently start wherever the
alphabet puts it, and the full suite would end with one xdist worker running it alone for minutes."""

import pathlib

from conftest import LONGEST_FILES_FIRST, TOO_SLOW_FOR_CI, UNVERIFIED, _file_rank

HERE = pathlib.Path(__file__).resolve().parent


def test_every_longest_file_exists_once():
    assert len(set(LONGEST_FILES_FIRST)) == len(LONGEST_FILES_FIRST)
    files = LONGEST_FILES_FIRST + tuple(entry.split("*")[0].split("::")[0] for entry in UNVERIFIED + TOO_SLOW_FOR_CI)
    missing = [name for name in files if not (HERE / name).is_file()]
    assert not missing, f"conftest.py names test files that do not exist: {missing}"


def test_the_longest_files_rank_first_in_their_order():
    class Item:
        def __init__(self, name):
            self.fspath = HERE / name

    ranks = [_file_rank(Item(name)) for name in LONGEST_FILES_FIRST]
    assert ranks == sorted(ranks) == list(range(len(LONGEST_FILES_FIRST)))
    assert _file_rank(Item("test_optim.py")) == len(LONGEST_FILES_FIRST)  # a short file: after all of them
