"""Waiting on a condition (never on a guessed sleep): a file, a predicate, a lock's queue."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def wait_until(ready: Callable[[], object], what: str, process: subprocess.Popen | None = None, timeout: float = 300):
    """Poll `ready()` until it is truthy; return it. `process`, when given, must still be running
    meanwhile. The timeout is a limit for hangs only."""
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if process is not None:
            assert process.poll() is None, process.communicate()
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s in vain for {what}")
        time.sleep(0.05)
    return found


def wait_for_file(path: Path, process: subprocess.Popen | None = None, timeout: float = 300) -> str:
    """Wait until a worker has written `path` (a gate file: created, then its pid written in
    it); return its text. `process`, when given, must still be running meanwhile."""
    wait_until(lambda: path.exists() and path.stat().st_size, str(path), process, timeout)
    return path.read_text()


def flock_queue(pid: int | None = None) -> int:
    """How many lock requests (threads of this process, or other processes) wait on a flock()
    lock that process `pid` (default: this one) holds, as the kernel lists them in /proc/locks:
    the lock's own record of who waits on it, where a sleep could only guess."""
    locks = Path("/proc/locks")
    if not locks.exists():
        pytest.skip("needs /proc/locks (Linux) to see who waits on a file lock")
    pid = str(pid or os.getpid())
    held, queued = set(), []
    for line in locks.read_text().splitlines():
        fields = line.split()[1:]  # after "N:": [->] FLOCK ADVISORY WRITE pid dev:inode start end
        waiting = fields[:1] == ["->"]
        fields = fields[1:] if waiting else fields
        if fields[:1] != ["FLOCK"]:
            continue
        if waiting:
            queued.append(fields[4])
        elif fields[3] == pid:
            held.add(fields[4])
    return sum(file in held for file in queued)


def _queued_on(lock) -> Callable[[], bool]:
    """Whether anyone waits on the claim lock `lock` (held here), asked of the lock itself."""
    if lock.storage.path is not None:
        return lambda: flock_queue() > 0
    import sqlalchemy

    engine = sqlalchemy.create_engine(lock.storage.driver_url, poolclass=sqlalchemy.pool.NullPool)
    query = sqlalchemy.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = :key")

    def waiting() -> bool:
        with engine.connect() as connection:
            return connection.execute(query, {"key": lock.key}).scalar() > 0

    return waiting


def claim_order(first, second) -> list[str]:
    """Hold `first` while another thread takes `second`: who got through in which order.

    The holder lets go only once the other thread is queued on the lock, as the lock itself says
    (the kernel for a file lock, pg_locks for PostgreSQL's advisory lock), or has got through,
    which only a lock that does not exclude lets it do: no sleep decides the order."""
    order = []

    def contend():
        with second:
            order.append("second")

    with first:
        thread = threading.Thread(target=contend, daemon=True)
        thread.start()
        queued = _queued_on(first)
        deadline = time.monotonic() + 120
        while thread.is_alive() and not queued():
            assert time.monotonic() < deadline, "the other holder neither waited on the lock nor got through in 120 s"
            time.sleep(0.01)
        order.append("first")  # a working lock keeps the other holder waiting until here
    thread.join(120)
    return order
