"""The machine's recorder: one process sends the records of every local worker of a sweep.

    recorder = MachineRecorder(tracking, spool_folder(sweep_dir)).start()   # the sweep's process
    ...                                    # workers write spool files (sweeper.records.spool)
    recorder.close()                       # after the workers: everything they wrote is sent

Why: a worker that records to MLflow itself imports MLflow and opens the store (seconds each, on
the same cores as the trials) and waits on the store for its run's creation and end. Instead the
sweep's process, which has opened the store already, reads the workers' spool files as they grow
and replays them into a `MlflowRecorder` a run, with the workers' own times and environment.

What survives what:
- a worker killed mid-trial: every line it wrote is in its file; the recorder sends them, and the
  run, left RUNNING, is ended (KILLED) by the sweep's audit;
- the store down: a file is deleted only once everything in it is in the store; it stays for the
  next pass, or the next run of the sweep;
- the recorder (the sweep) killed: the files stay; the next run of the sweep replays them. A run
  already made is named in `<file>.run` as soon as the store made it, so the replay records into it
  (metrics carry their original times: nothing is recorded twice), and a run already ended is
  left as it is.
Only one recorder reads a folder at a time (a lock file): two sweep commands of one sweep on one
machine take turns.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.records.environment import describe_environment
from sweeper.records.mlflow_store import mlflow_calls, mlflow_client, one_line
from sweeper.records.recorder import MlflowRecorder
from sweeper.records.sender import EXIT_RETRY_SECONDS, EXIT_WAIT_SECONDS
from sweeper.records.spool import epoch_event, read_lines, spool_files, start_event, step_event, take_recorder_lock, writer_gone
from sweeper.trial.events import StepEvent, TrialResult

if TYPE_CHECKING:
    from sweeper.records.tracking import SweepTracking

__all__ = ["MachineRecorder"]

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the spool folder is read while the trials run


class MachineRecorder:
    """Reads a sweep's spool folder from a thread of this process and sends what it finds."""

    def __init__(self, tracking: SweepTracking, folder: Path, poll: float = POLL_SECONDS) -> None:
        self.tracking = tracking
        self.folder = folder
        self.poll = poll
        self._runs: dict[Path, _Replay] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweeper recorder", daemon=True)
        self._lock_fd: int | None = None

    def start(self) -> MachineRecorder:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def settled(self) -> bool:
        """Whether every record the workers wrote is in the store: no spool file is left."""
        return not spool_files(self.folder)

    def close(self) -> None:
        """Send everything the spool files hold now, then stop (the workers have ended)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            self._pass()
        # The workers have ended. A store that is down now (a server restarting) is given a while
        # to come back before the sweep ends; what it still lacks then stays in the folder.
        deadline = time.monotonic() + EXIT_WAIT_SECONDS
        while not self._pass() and time.monotonic() < deadline and not self._store_full():
            time.sleep(EXIT_RETRY_SECONDS)
        if self._runs:
            why = "could not be written: the disk is full" if self._store_full() else "could not take them"
            logger.warning(
                "sweeper: MLflow at %s %s; the records of %d run(s) stay in %s, and the next run of this sweep "
                "(the same command) sends them.",
                self.tracking.settings.label,
                why,
                len(self._runs),
                self.folder,
            )

    def _store_full(self) -> bool:
        """Whether the store refuses for a full disk: waiting will not bring space back."""
        return any(replay.recorder is not None and replay.recorder.disk_full for replay in self._runs.values())

    def _pass(self) -> bool:
        """Read every spool file and send what is new; True when every file whose writer is gone
        is in the store (and removed)."""
        if not self._holds_folder():
            return True  # another command of this sweep records here
        left = False
        for path in spool_files(self.folder):
            replay = self._runs.get(path) or self._runs.setdefault(path, _Replay(path, self.tracking))
            gone = False
            try:
                gone = writer_gone(path)  # asked before reading: what it wrote is then all there
                replay.read()
                if gone and replay.finish():
                    del self._runs[path]
                    continue
            except Exception as error:  # noqa: BLE001 - one file's trouble stops no other run's records
                logger.warning("sweeper: the records in %s could not be sent yet (%s); trying again.", path, one_line(error))
            left = left or gone
        return not left

    def _holds_folder(self) -> bool:
        if self._lock_fd is None:
            self._lock_fd = take_recorder_lock(self.folder)  # None: another sweep command of this sweep records here
        return self._lock_fd is not None


class _Replay:
    """One spool file, replayed into one MLflow run as it grows."""

    def __init__(self, path: Path, tracking: SweepTracking) -> None:
        self.path = path
        self.tracking = tracking
        self.offset = 0
        self.recorder: MlflowRecorder | None = None
        self.steps: list[StepEvent] = []
        self.done = False  # the run was ended by an earlier replay: nothing more goes to it
        self.named = path.with_suffix(".run").exists()

    def read(self) -> None:
        for line, offset in read_lines(self.path, self.offset):
            if not self.done:
                try:
                    entry = json.loads(line)
                except ValueError:  # a damaged line (a full disk): the rest of the run is still sent
                    logger.warning("sweeper: a damaged line in %s was skipped.", self.path)
                else:
                    self._replay(entry)  # if it raises (the store down), it is read again next time
            self.offset = offset
        if self.recorder is not None and self.recorder.run_id and not self.named:
            self.path.with_suffix(".run").write_text(self.recorder.run_id)
            self.named = True

    def finish(self) -> bool:
        """The writer is gone and every line was read: True once everything is in the store and
        the file is removed."""
        if self.recorder is not None and not self.done and not self.recorder.flush():
            return False  # the store is down: kept, sent at a later pass
        for path in (self.path, self.path.with_suffix(".run")):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.path.with_suffix(".files"), ignore_errors=True)
        return True

    def _replay(self, entry: dict[str, Any]) -> None:
        if "run" in entry:
            self.recorder = self._recorder(entry["run"])
            return
        recorder = self.recorder
        if recorder is None:  # no header: not a run's file
            return
        at = int(entry["t"])
        recorder.clock = lambda: at
        if "step" in entry:
            event = step_event(entry["step"])
            self.steps.append(event)
            recorder.on_step(event)
        elif "epoch" in entry:
            recorder.on_epoch(epoch_event(entry["epoch"]))
        elif "start" in entry:
            event = start_event(entry["start"])
            torch = entry.get("torch")
            recorder.environment = {**describe_environment(event.device), **({"torch": torch} if torch else {})}
            recorder.on_start(event)
        elif "tags" in entry:
            recorder.queue_tags(entry["tags"])
        elif "attach" in entry:
            recorder.attach(entry["attach"], (self.path.with_suffix(".files") / entry["file"]).read_bytes())
        elif "end" in entry:
            recorder.on_end(TrialResult(**entry["end"], steps=self.steps))
            self.steps = []

    def _recorder(self, header: dict[str, Any]) -> MlflowRecorder:
        run_id = self.path.with_suffix(".run").read_text().strip() if self.named else None
        if run_id is not None:
            self.done = self._ended(run_id)
        return MlflowRecorder(
            self.tracking.settings,
            header.get("config"),
            self.tracking.locate,
            run_name=header.get("run_name"),
            tags=header.get("tags"),
            overrides=header.get("overrides", ()),
            run_id=run_id,
        )

    def _ended(self, run_id: str) -> bool:
        """Whether an earlier replay's run has ended already (records sent to it would be refused)."""
        settings = self.tracking.settings
        with mlflow_calls(settings):
            return mlflow_client(settings.uri).get_run(run_id).info.status != "RUNNING"
