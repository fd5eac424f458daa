"""run_lock: one training run per workdir. The run through `python -m lzn_jax.main` is in tests/test_reliability.py
(`test_a_second_run_in_a_live_runs_workdir_stops_before_touching_it`)."""

import json
import logging
import socket
import subprocess
import sys
import threading
import time

import pytest

from lzn_jax import run_lock


def write_lock(workdir, **fields):
    record = {"host": socket.gethostname(), "pid": 0, "token": "theirs", "beat": 0, "started": "then",
              "command": "python -m lzn_jax.main", **fields}  # fmt: skip
    (workdir / run_lock.NAME).write_text(json.dumps(record))
    return record


def read_lock(workdir):
    return json.loads((workdir / run_lock.NAME).read_text())


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_holder_on_this_host_stops_the_second_run_naming_it(tmp_path, live_process):
    write_lock(tmp_path, pid=live_process.pid, pid_start=run_lock._process_start(live_process.pid))
    with pytest.raises(run_lock.WorkdirLockedError, match=f"Another run is training in this workdir: pid {live_process.pid}"):
        run_lock.acquire(str(tmp_path))
    assert read_lock(tmp_path)["token"] == "theirs"  # left as it was


def test_a_dead_holder_on_this_host_or_a_reused_pid_is_taken_over_and_released(tmp_path, live_process, caplog):
    """A run killed with SIGKILL leaves its lock behind: the next run on the host takes it over (the pid is gone).
    A restarted container reuses low pids: a live process with the holder's pid but another start time is not it."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for holder in ({"pid": ended.pid}, {"pid": live_process.pid, "pid_start": -1}):
        write_lock(tmp_path, **holder)
        with caplog.at_level(logging.WARNING):
            with run_lock.hold(str(tmp_path)):
                assert read_lock(tmp_path)["pid"] != holder["pid"]
        assert "Taking over" in caplog.text
        assert not (tmp_path / run_lock.NAME).exists()


def test_the_holder_renews_its_heartbeat_and_removes_the_lock_after_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    with pytest.raises(RuntimeError, match="a failing run"):
        with run_lock.hold(str(tmp_path)):
            first = read_lock(tmp_path)["beat"]
            time.sleep(0.5)
            assert read_lock(tmp_path)["beat"] > first
            raise RuntimeError("a failing run")
    assert not (tmp_path / run_lock.NAME).exists()


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_stops(tmp_path, monkeypatch):
    """A preempted VM leaves its lock in the bucket, and its job restarts on another machine: that run must start
    once the heartbeats stop. A second launch beside a live run on another machine must not."""
    monkeypatch.setattr(run_lock, "STALE_S", 0.6)
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.15)
    write_lock(tmp_path, host="another-host")
    start = time.monotonic()
    with run_lock.hold(str(tmp_path)):
        assert time.monotonic() - start >= 0.6
        assert read_lock(tmp_path)["host"] == socket.gethostname()

    record = write_lock(tmp_path, host="another-host")

    def beat():  # the other host's run, alive
        for n in range(1, 10):
            time.sleep(0.1)
            (tmp_path / run_lock.NAME).write_text(json.dumps({**record, "beat": n}))

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        with pytest.raises(run_lock.WorkdirLockedError, match="pid 0 on host 'another-host'.*alive"):
            run_lock.acquire(str(tmp_path))
    finally:
        beating.join()


def test_only_the_primary_process_takes_the_lock(tmp_path, live_process):
    write_lock(tmp_path, pid=live_process.pid, pid_start=run_lock._process_start(live_process.pid))
    with run_lock.hold(str(tmp_path), primary=False):  # process 1 of the holder's own job
        pass
    assert read_lock(tmp_path)["pid"] == live_process.pid
