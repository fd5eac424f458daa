"""One training run per workdir: `<workdir>/run.lock`, held by process 0 of the run that trains there.

Two runs training in one workdir destroy each other's work: a starting run's writable Orbax manager deletes every
unfinished save it finds (`*.orbax-checkpoint-tmp*`), the other run's save in flight among them (that run then dies:
"Save failed ... params are missing"), and both write the same steps' metrics. The lock is a small JSON file naming
its holder (host, process id, start time, command) and a heartbeat count that the holder rewrites every
`HEARTBEAT_S` seconds from a daemon thread; it deletes the file when it stops (an error or a signal included).

A run that finds the file:
- written by a live process of this host: stops at once, naming that process;
- written by a process of this host that is gone (killed, or the machine restarted): takes the lock over;
- written from another host: watches it. A heartbeat within `STALE_S` seconds (measured on this host's clock, so
  the hosts' clocks need not agree) means that run is alive: stop, naming it. None means its machine is gone (a
  preempted VM whose job restarts elsewhere): take the lock over, with a warning.

Paths are local or `gs://` (`etils.epath`, Orbax's path library). There is no atomic create on every filesystem, so
two runs started within the same second can both take a free lock; each reads the file back after writing it and
the one whose write did not stay stops (`_claim`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 150.0  # five missed heartbeats
SETTLE_S = 0.2  # between writing a free lock and reading it back


class WorkdirLockedError(RuntimeError):
    """Another run is training in this workdir."""


def _path(workdir: str):
    from etils import epath

    return epath.Path(workdir) / NAME


def _read(path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):  # not a lock this module wrote (they are replaced whole): as good as free
        return {}


def _process_start(pid: int) -> Optional[int]:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat), None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the holder's process still runs on this host: its pid exists and started when the holder did (a
    restarted container reuses low pids)."""
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    started, recorded = _process_start(pid), holder.get("pid_start")
    return started is None or recorded is None or started == recorded


def _describe(holder: dict) -> str:
    command = holder.get("command", "?")
    command = command if len(command) <= 160 else command[:160] + " …"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')} ({command})"


class _Holder:
    """This process's claim: the file's content and the heartbeat thread that keeps it fresh."""

    def __init__(self, path):
        self.path, self.stop = path, threading.Event()
        self.record = {
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
            "token": uuid.uuid4().hex, "beat": 0,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)[:500],
        }  # fmt: skip
        self.thread = threading.Thread(target=self._beat, name="run-lock heartbeat", daemon=True)

    def write(self) -> None:
        # Whole or not at all (a reader of a half-written file would take it for a dead holder's): written aside and
        # renamed over the lock. (A gs:// object is replaced whole by any write.)
        aside = self.path.with_name(f"{NAME}.{self.record['token']}.tmp")
        aside.write_text(json.dumps(self.record))
        aside.replace(self.path)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            self.record["beat"] += 1
            try:
                self.write()
            except OSError as error:  # a transient storage error must not kill the run; the next beat retries
                logging.warning("Could not refresh %s: %s", self.path, error)

    def release(self) -> None:
        self.stop.set()
        self.thread.join()
        current = _read(self.path)
        if current and current.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)


def _wait_for_stale(path, seen: dict) -> Optional[dict]:
    """Watches a lock written from another host for STALE_S seconds: None when it went stale (or was released),
    the newer record when its holder wrote again (alive)."""
    deadline = time.monotonic() + STALE_S
    logging.warning("%s is held by %s. Waiting up to %.0f s for a heartbeat: none means that run is gone.", path,
                    _describe(seen), STALE_S)  # fmt: skip
    while time.monotonic() < deadline:
        time.sleep(min(HEARTBEAT_S / 3, max(deadline - time.monotonic(), 0.0)))
        current = _read(path)
        if not current:
            return None
        if current != seen:
            return current
    return None


def _claim(path) -> _Holder:
    holder = _Holder(path)
    holder.write()
    time.sleep(SETTLE_S)
    current = _read(path)
    if not current or current.get("token") != holder.record["token"]:
        raise WorkdirLockedError(f"Another run took {path} at the same moment ({_describe(current or {})}); "
                                 "one run per workdir.")  # fmt: skip
    holder.thread.start()
    return holder


def acquire(workdir: str) -> _Holder:
    """Takes `<workdir>/run.lock` for this process (see the module docstring), or raises WorkdirLockedError."""
    path = _path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    found = _read(path)
    if found:
        here = found.get("host") == socket.gethostname()
        if here and found.get("pid") != os.getpid() and _alive(found):
            raise WorkdirLockedError(
                f"Another run is training in this workdir: {_describe(found)}. Stop it first (one run per workdir: "
                f"a second one would delete the saves it has in flight), or choose another --workdir."
            )
        if not here:
            newer = _wait_for_stale(path, found)
            if newer is not None:
                raise WorkdirLockedError(
                    f"Another run is training in this workdir: {_describe(newer)}, alive (it renewed {path} "
                    f"within {STALE_S:.0f} s). Stop it first, or choose another --workdir."
                )
        logging.warning("Taking over %s from a run that is gone: %s.", path, _describe(found))
    return _claim(path)


@contextlib.contextmanager
def hold(workdir: str, *, primary: bool = True) -> Iterator[None]:
    """The lock for the duration of the block, taken by the primary process (process 0) of the run only."""
    if not primary:
        yield
        return
    holder = acquire(workdir)
    try:
        yield
    finally:
        holder.release()
