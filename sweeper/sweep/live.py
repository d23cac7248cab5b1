"""The live view of a sweep: workers, finished / pruned / failed trials, and the best so far.

Everything shown is read from the study itself (trial states, intermediate values and the
`worker` / `device` / `epochs` attributes workers keep up to date), so the view is the same
whoever runs the trials, on any machine. Where the terminal is not interactive (CI, a log
file) it prints a line whenever a trial starts or ends instead, and one every few seconds while
the running trials finish epochs (a fused run's trials all end together).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from sweeper.sweep.counts import Counts
from sweeper.sweep.plan import SweepPlan
from sweeper.sweep.storage import ClaimLock

__all__ = ["LiveView", "SweepStatus", "WorkerNotes", "fail_trials_of_dead_worker", "how_it_ended", "read_status", "sampled"]

# Seconds at least between two lines that tell only of epochs done (non-interactive output).
EPOCHS_EVERY = 5.0


@dataclass(frozen=True)
class SweepStatus:
    """The sweep at one moment, as the live view and the log lines show it."""

    counts: Counts
    n_trials: int
    best: str | None  # the best trial, in words
    running: tuple[tuple[str, ...], ...]  # trial, worker, device, epochs, last objective, sampled
    workers: tuple[tuple[str, str], ...]  # label, state

    def line(self) -> str:
        c = self.counts
        text = f"{c.finished}/{self.n_trials} finished ({c.complete} complete, {c.pruned} pruned), {c.failed} failed, {c.running} running"
        text += self._epochs_done()
        return f"{text}; best {self.best}" if self.best else text

    def _epochs_done(self) -> str:
        """How far the running trials are: " (epoch 3 done)", " (epochs 1-4 done)"; "" before any."""
        done = [int(row[3]) for row in self.running if row[3].isdigit()]
        if not done or max(done) == 0:
            return ""
        low, high = min(done), max(done)
        return f" (epoch {high} done)" if low == high else f" (epochs {low}-{high} done)"


def sampled(trial: FrozenTrial, plan: SweepPlan) -> str:
    """What the sampler chose for a trial, to be read at a glance: its overrides beyond the
    sweep's own, fractions to 3 significant digits (`lr.high=0.00181`). The exact values stay in
    the trial's records and in its rerun command."""
    overrides = trial.user_attrs.get("overrides", [])
    return " ".join(_rounded(o) for o in overrides if o not in plan.overrides)


def _rounded(override: str) -> str:
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    if value.lstrip("+-").isdigit() or not math.isfinite(number):  # whole numbers stay whole
        return override
    return f"{key}={number:.3g}"


def read_status(study: optuna.Study, plan: SweepPlan, workers: Sequence = ()) -> SweepStatus:
    trials = study.get_trials(deepcopy=False)
    running = tuple(
        (
            str(t.number),
            t.user_attrs.get("worker", "?"),
            t.user_attrs.get("device", "?"),
            str(t.user_attrs.get("epochs", 0)),
            f"{t.intermediate_values[max(t.intermediate_values)]:.4g}" if t.intermediate_values else "-",
            sampled(t, plan),
        )
        for t in trials
        if t.state == TrialState.RUNNING
    )
    states = tuple((w.label, _state(w.poll())) for w in workers)
    return SweepStatus(Counts.of(trials), plan.n_trials, _best(study, trials, plan), running, states)


def _state(code: int | None) -> str:
    return "running" if code is None else "done" if code == 0 else how_it_ended(code)


def how_it_ended(code: int) -> str:
    """A worker's exit code in words: a negative code is the signal that killed it (subprocess's
    convention), named, since "exited -9" tells nobody that the kernel ran out of memory."""
    if code >= 0:
        return f"exited {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"killed by signal {-code}"
    if -code == signal.SIGKILL:
        return f"killed by {name} (out of memory? the kernel's log says: dmesg | grep -i oom)"
    return f"killed by {name}"


def fail_trials_of_dead_worker(study: optuna.Study, worker: object, code: int, claim: ClaimLock | None = None) -> bool:
    """The trials `worker` (killed by a signal: `code` < 0) left running: those whose `worker`
    attribute is its host and pid. Each keeps how its worker ended as its reason and, where the
    storage has heartbeats, is failed now and queued again (sweep.retries), as Optuna's heartbeat
    check (fail_stale_trials) would do storage.grace_period later (a minute by default): this
    process saw the worker end; the check sees its heartbeat stop. Under the sweep's `claim`,
    which workers count the trials under: one that counted between the failure and the retry
    would start a new trial in the retry's place. A worker without a pid here (a cluster job's)
    leaves its trials to the heartbeat; a study that cannot be written, as they are: the note
    says how the worker ended. True where its trials were failed and queued again."""
    pid = worker.pid() if callable(getattr(worker, "pid", None)) else None
    if pid is None:
        return False
    mark = f"{socket.gethostname()}:{pid}"
    reason = f"its worker was {how_it_ended(code)}; its log: {getattr(worker, 'log', 'unknown')}"
    storage = study._storage
    with contextlib.suppress(Exception), claim or contextlib.nullcontext():  # a full disk, a database gone: the note stands
        left = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get("worker") == mark]
        for trial in left:
            storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        if not (isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)):
            return False  # a journal's trials are not retried (no heartbeats)
        retry = storage.get_heartbeat_stale_trial_callback()
        for trial in left:
            try:
                failed = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:  # the heartbeat check of a worker got there first
                continue
            if failed and retry is not None:
                retry(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
        return True
    return False


def _best(study: optuna.Study, trials: Sequence[FrozenTrial], plan: SweepPlan) -> str | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    if plan.objectives.several:
        return f"{len(study.best_trials)} trial(s) on the Pareto front"
    pick = max if plan.objectives.directions[0] == "maximize" else min
    best = pick(complete, key=lambda t: t.value)
    return f"{plan.objectives.names[0]} {best.value:.4g} (trial {best.number}: {sampled(best, plan)})"


class LiveView:
    """A rich live table on an interactive terminal; one line per change elsewhere."""

    def __init__(self, title: str, enabled: bool | str = "auto", console: Console | None = None) -> None:
        self.title = title
        self.console = console or Console()
        interactive = self.console.is_terminal if enabled == "auto" else bool(enabled)
        self._live = Live(console=self.console, auto_refresh=False) if interactive else None
        self._last_line = ""
        self._last_counts: Counts | None = None
        self._printed_at = -math.inf

    def __enter__(self) -> LiveView:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, progress: SweepStatus) -> None:
        if self._live is not None:
            self._live.update(self._render(progress), refresh=True)
            return
        # A trial that ends or starts is a line at once; epochs done, at most one every few
        # seconds (a log's reader sees the sweep move, and many workers' epochs make no flood).
        line, now = progress.line(), time.monotonic()
        if line != self._last_line and (progress.counts != self._last_counts or now - self._printed_at >= EPOCHS_EVERY):
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {line}", highlight=False, soft_wrap=True)
            self._last_line, self._last_counts, self._printed_at = line, progress.counts, now

    def say(self, text: str) -> None:
        """A message above the progress, kept in the scrollback (a worker's warning)."""
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False, markup=False, soft_wrap=True)

    def _render(self, progress: SweepStatus) -> Group:
        trials = Table(title=f"{self.title}: {progress.line()}", title_justify="left", expand=True)
        for column in ("trial", "worker", "device", "epochs", "objective", "sampled"):
            trials.add_column(column, overflow="fold")
        for row in progress.running:
            trials.add_row(*row)
        workers = Table(show_header=True, expand=False)
        workers.add_column("worker")
        workers.add_column("state")
        for label, state in progress.workers:
            workers.add_row(label, state)
        return Group(trials, workers)


class WorkerNotes:
    """The warnings workers log (lines holding "sweeper: ", e.g. an MLflow server out of reach),
    read from their log files as they grow, for the sweep's console: nobody watches the logs
    while a sweep runs. The same note from several workers in a row is passed on once. A
    worker killed by a signal is noted once, by the signal's name (a crash leaves its Python
    stack in its log: `sweeper worker` enables faulthandler), and, given the `study`, the trial
    it left running records that as its reason and is failed and queued again at once
    (fail_trials_of_dead_worker); the sweep's summary and report read the reason there."""

    MARKS = ("sweeper: ", "sweeper worker: ")  # a warning; the error a worker stopped with
    STOPPED = (0, 130, 143)  # done, or stopped by Ctrl-C or SIGTERM (the sweep says so itself)

    def __init__(self, workers: Sequence, study: optuna.Study | None = None, claim: ClaimLock | None = None) -> None:
        self._workers = list(workers)
        self._study, self._claim = study, claim
        # from where this run's workers began to write (a resumed sweep's logs hold the earlier runs')
        self._read = {worker.label: (worker.log, getattr(worker, "log_size", None) or 0) for worker in workers}
        self._last = ""
        self._killed: set[str] = set()

    def new(self) -> list[str]:
        notes = self._read_logs()
        for worker in self._workers:
            code = worker.poll()
            if code is not None and code < 0 and worker.label not in self._killed:
                self._killed.add(worker.label)
                retried = self._study is not None and fail_trials_of_dead_worker(self._study, worker, code, self._claim)
                then = "its trial fails and runs again (sweep.retries)" if retried else "its trial fails and runs again on resume"
                notes.append(f"{worker.label}: {how_it_ended(code)}; {then}; its log: {worker.log}")
            elif code is not None and code not in self.STOPPED and worker.label not in self._killed:
                self._killed.add(worker.label)  # its error is in its log, if the log could be written (a full disk)
                notes.append(f"{worker.label}: {how_it_ended(code)}; its log: {worker.log}")
        return notes

    def _read_logs(self) -> list[str]:
        notes = []
        for label, (log, offset) in self._read.items():
            try:
                with open(log, "rb") as file:
                    file.seek(offset)
                    chunk = file.read()
            except OSError:  # not there yet
                continue
            whole = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
            self._read[label] = (log, offset + len(whole))
            for line in whole.decode(errors="replace").splitlines():
                mark = next((mark for mark in self.MARKS if mark in line), None)
                if mark is None:
                    continue
                note = line[line.index(mark) + len(mark) :]
                if note != self._last:
                    notes.append(f"{label}: {note}")
                    self._last = note
        return notes
