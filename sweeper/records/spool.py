"""A trial's records as a worker hands them over: one spool file a run, appended line by line.

    reporter = SpoolWriter(spool_folder(sweep_dir), header)   # in the worker: no MLflow here
    train(trial_cfg, [reporter, ...])                          # every event: one JSON line
    for entry in read_lines(path, offset): ...                 # in the machine's recorder

A local worker of a sweep does not talk to MLflow: it writes each event of its trial (start,
step, epoch, end, an attached file) as one line to a file of its own, and the machine's recorder
(`sweeper.records.machine_recorder`, in the sweep's process) sends them. A line is written with
one `write` call as the event happens, so the kernel holds it whatever becomes of the worker
(SIGKILL included); the recorder reads whole lines only. Nothing secret is written (a URL's password is masked, as
MLflow gets it). Each line carries the time it was
written: the recorder sends the metrics with it, so a file sent twice (a recorder restarted
part way) records nothing twice.

The writer holds an exclusive `flock` on its file while it may still write: the recorder knows
a file is complete (ended, or its worker dead) when it can take a shared lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sweeper.config.errors import disk_full
from sweeper.records.environment import torch_environment
from sweeper.records.recorder import now_ms
from sweeper.secrets import mask_text
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult

__all__ = [
    "SPOOL_ENV",
    "SpoolWriter",
    "epoch_event",
    "read_lines",
    "spool_files",
    "spool_folder",
    "start_event",
    "step_event",
    "take_recorder_lock",
    "trials_in_another_recorders_hands",
    "writer_gone",
]

logger = logging.getLogger(__name__)

# The environment variable that tells a local worker where its machine's recorder reads.
SPOOL_ENV = "SWEEPER_RECORDS_SPOOL"
SUFFIX = ".jsonl"


def spool_folder(sweep_dir: Path | str) -> Path:
    """Where a sweep's workers on this machine hand their records over: one folder per host, so
    that a results_dir shared between machines gives each machine's recorder its own files."""
    return Path(sweep_dir) / "records" / socket.gethostname()


class SpoolWriter(Reporter):
    """Writes one run's records to its spool file; the trial waits for a `write` call per event.

    `header` says which run it is (trial number, run name, tags, overrides, the trial's config);
    it is the file's first line, written when the trial starts. `attach` puts a file's bytes
    beside the spool file."""

    def __init__(self, folder: Path, header: Mapping[str, Any]) -> None:
        stem = f"{os.getpid()}-{header.get('trial', 'run')}-{uuid.uuid4().hex[:8]}"
        self.path = folder / f"{stem}{SUFFIX}"
        self.files = folder / f"{stem}.files"
        self.header = dict(header)
        self._fd: int | None = None
        self._failed: OSError | None = None  # the write that failed, if one did

    def on_start(self, event: StartEvent) -> None:
        # The file is made now: a trial that fails before it starts training has no run.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as error:
            self._lost(error)
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # held until the run's end: the recorder waits for it
        self._write({"run": self.header})
        # What only this process knows of where the run ran (the rest: the recorder's, same machine).
        self._write({"start": dataclasses.asdict(event), "torch": torch_environment()})

    def on_step(self, event: StepEvent) -> None:
        self._write({"step": [event.step, event.epoch, event.phase, list(event.lrs), event.momentum, event.loss]})

    def on_epoch(self, event: EpochEvent) -> None:
        self._write({"epoch": dataclasses.asdict(event)})

    def attach(self, name: str, data: bytes | str) -> None:
        """A file of the run (weights, a table): written beside the spool file, then named in it."""
        if self._fd is None:
            return
        target = self.files / Path(name).name
        try:
            self.files.mkdir(exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        except OSError as error:
            self._lost(error, what=f"{name} of this run")
            return
        self._write({"attach": name, "file": target.name})

    def queue_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags for the run (the model keeper's `saved_model`)."""
        self._write({"tags": {key: str(value) for key, value in tags.items()}})

    def on_end(self, result: TrialResult) -> None:
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in ("steps", "epochs")}
        self._write({"end": fields})
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with it
            self._fd = None

    def __del__(self) -> None:  # a trial that raised past its end: the file is let go with its reporter
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - at the interpreter's end the process lets it go anyway
            pass

    def _write(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            return
        entry["t"] = now_ms()
        line = json.dumps(entry, default=str)
        if "step" not in entry:  # a config or a reason may hold a URL's password: none reaches results/
            line = mask_text(line)
        try:
            os.write(self._fd, (line + "\n").encode())
        except OSError as error:  # a full disk: the trial goes on, its run's records stop here
            self._lost(error)
            self.close()

    def unwritten(self) -> str | None:
        """What of the trial could not be written, its disk being full: the trial is then failed,
        not told finished without its records (sweeper.sweep.workers.kept_whole)."""
        return f"its MLflow records ({self.path.parent})" if self._failed is not None and disk_full(self._failed) else None

    def _lost(self, error: OSError, what: str = "the records of this trial") -> None:
        """Recording must never end a trial: say once what is lost, and go on."""
        self._failed = error
        logger.warning("sweeper: %s could not be written to %s (%s); training goes on without them.", what, self.path.parent, error)


def read_lines(path: Path, offset: int) -> Iterator[tuple[bytes, int]]:
    """The whole lines of a spool file from byte `offset`, each with the offset after it; a line
    being written (no newline yet) is left for the next read."""
    with open(path, "rb") as spool:
        spool.seek(offset)
        for line in spool:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield line, offset


def writer_gone(path: Path) -> bool:
    """Whether the spool file's writer has let it go (its run ended, or its worker died)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def spool_files(folder: Path) -> list[Path]:
    """The spool files in a folder, in name order."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"*{SUFFIX}"), key=lambda path: path.name)


RECORDER_LOCK = "recorder.lock"  # held by the one recorder that reads a spool folder


def take_recorder_lock(folder: Path) -> int | None:
    """The recorder's lock on a spool folder, taken: its descriptor (the lock lasts until it is
    closed), or None while another process's recorder holds it."""
    fd = os.open(folder / RECORDER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def trials_in_another_recorders_hands(folder: Path) -> set[int]:
    """The trials whose spool files wait in `folder` while another process's recorder holds it
    (a second sweep command of the sweep on this machine): that recorder sends them and only
    then removes their files. Empty when no recorder holds the folder."""
    if not (folder / RECORDER_LOCK).is_file():  # no recorder ever read it: nothing is made here
        return set()
    fd = take_recorder_lock(folder)
    if fd is not None:
        os.close(fd)
        return set()
    # Listed while that recorder holds the folder: a file it has finished sending is gone.
    return {trial for trial in map(_trial_of, spool_files(folder)) if trial is not None}


def _trial_of(path: Path) -> int | None:
    """The trial number a spool file's name carries (`<pid>-<trial>-<id>.jsonl`), if any."""
    parts = path.stem.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def step_event(values: list[Any]) -> StepEvent:
    step, epoch, phase, lrs, momentum, loss = values
    return StepEvent(step, epoch, phase, tuple(lrs), momentum, loss)


def start_event(values: Mapping[str, Any]) -> StartEvent:
    return StartEvent(**{**values, "peaks": tuple(values["peaks"])})


def epoch_event(values: Mapping[str, Any]) -> EpochEvent:
    return EpochEvent(**values)
