"""The one thread of a process that sends its runs' records to MLflow, and the runs the store refused.

A recorder (sweeper.records.recorder) queues; its flushes are tasks for the `Sender`, so a trial's
thread never waits on the store (except for its run's end). A run the store refused (it was down,
or its disk full) is kept by `Unsent` and sent with the next flush of any run in this process, or
at the process's exit, which waits a while for a store that went down near the end. The exit and
fork hooks are registered with the sender's first task.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from sweeper.records.mlflow_store import TrackingSettings

__all__ = ["Deliverable", "Sender", "Unsent", "wait_for_records"]

logger = logging.getLogger(__name__)

# How long a process that ends with records unsent waits for the store to come back, and how often it tries.
EXIT_WAIT_SECONDS = 60
EXIT_RETRY_SECONDS = 2


class Deliverable(Protocol):
    """A run's records that can be sent again (MlflowRecorder)."""

    settings: TrackingSettings
    run_id: str | None
    disk_full: bool

    def deliver(self) -> bool: ...


class Sender:
    """The one thread of a process that talks to MLflow for its runs, in the order asked: a
    flush is a task for it, so the trial's thread never waits on the store (except for a run's
    end). Its tasks finish before the process ends: the executor's threads are joined at exit,
    before `Unsent.at_exit` retries what the store refused."""

    _executor: ThreadPoolExecutor | None = None
    _lock = threading.Lock()

    _hooked = False  # the process's exit and fork hooks, registered with the first task

    @classmethod
    def submit(cls, task: Callable[[], Any]) -> Future:
        with cls._lock:
            if cls._executor is None:
                cls._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweeper-records")
                cls._hook()
            return cls._executor.submit(task)

    @classmethod
    def _hook(cls) -> None:
        """Registered on first use, not at import: a process that records nothing (a command that
        only reads, a worker whose trials spool their records) carries no hooks of ours."""
        if cls._hooked:
            return
        cls._hooked = True
        os.register_at_fork(after_in_child=Sender.forget)
        atexit.register(Unsent.at_exit)

    @classmethod
    def forget(cls) -> None:
        """In a forked child: the parent's thread is not there; a new one starts when needed."""
        cls._executor, cls._lock = None, threading.Lock()


def wait_for_records() -> None:
    """Wait until every record this process queued so far is sent (or kept for a store that is
    down); a process waits so at its end anyway."""
    Sender.submit(lambda: None).result()


class Unsent:
    """Runs whose records the store refused (it was down): sent with the next flush of any run
    in this process, or when the process exits."""

    recorders: list[Deliverable] = []

    @classmethod
    def keep(cls, recorder: Deliverable) -> None:
        """Keep a recorder whose flush failed (in the sender, or at exit)."""
        if recorder not in cls.recorders:
            cls.recorders.append(recorder)

    @classmethod
    def retry(cls, settings: TrackingSettings | None = None, but: Deliverable | None = None) -> None:
        """Send the kept runs (of one store, when `settings` are given; `but` one, which is about
        to be sent anyway)."""
        for recorder in list(cls.recorders):
            if recorder is but or (settings is not None and recorder.settings.uri != settings.uri):
                continue
            cls.recorders.remove(recorder)
            if not recorder.deliver():  # kept again
                return  # still down: the others would fail alike

    @classmethod
    def at_exit(cls) -> None:
        cls.retry()
        if any(not recorder.disk_full for recorder in cls.recorders):
            # A store that went down near the end of a sweep (a server restarting) would take
            # these records with it: give it a while to come back before the process ends.
            logger.warning(
                "sweeper: MLflow at %s is out of reach with the records of %d run(s) unsent; "
                "waiting up to %d s for it before this process ends.",
                cls.recorders[0].settings.label,
                len(cls.recorders),
                EXIT_WAIT_SECONDS,
            )
            deadline = time.monotonic() + EXIT_WAIT_SECONDS
            while cls.recorders and time.monotonic() < deadline:
                time.sleep(EXIT_RETRY_SECONDS)
                cls.retry()
        for recorder in cls.recorders:
            logger.warning(
                "sweeper: MLflow at %s was not %s before this process ended; run %s lost the records it had not sent.",
                recorder.settings.label,
                "written (its disk is full)" if recorder.disk_full else "reachable",
                recorder.run_id or "(never created)",
            )
