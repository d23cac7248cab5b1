"""Where a sweep's workers run: processes on this machine, or jobs on a SLURM cluster.

Both start the same worker (`sweeper worker`, or its function in a job) with the sweep's
command line, so a worker recomposes exactly the parent's config. A launcher returns handles
the parent watches: `poll()` is None while the worker runs, then its exit code.

A local worker gets that command line in its environment, not in its argv: any user of the
machine can read any process's argv (`ps`), and an override may hold a password. A local worker
also ends when the sweep that started it ends, however it ends (SIGKILL included).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from sweeper.config import ConfigError
from sweeper.sweep.slurm_jobs import check_slurm, submit_jobs
from sweeper.sweep.study import SweepPlan, plan_sweep
from sweeper.sweep.workers import Slot, StopRequest, plan_slots, run_worker, usable_cores, visible_gpus

__all__ = [
    "SweepArguments",
    "WorkerHandle",
    "check_launcher",
    "end_with_parent",
    "launch_held_workers",
    "launch_workers",
    "worker_command",
]

STOP_SECONDS = 15  # for a stopped worker to mark its trial failed and send its records
SWEEP_ARGUMENTS = "SWEEPER_SWEEP_ARGUMENTS"  # the environment variable that carries them
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
PARENT_CHECK_SECONDS = 1.0  # where there is no prctl: how often a worker looks for its parent


class WorkerHandle(Protocol):
    label: str
    log: Path

    def poll(self) -> int | None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class SweepArguments:
    """What a local worker needs of the sweep that starts it: the sweep's command line, already
    validated, and the sweep's process id (the worker ends when that process does)."""

    overrides: list[str]
    config_dirs: list[str]
    parent: int

    def environment(self) -> dict[str, str]:
        """The worker's environment entry. A process's environment is readable by its owner alone
        (/proc/PID/environ is mode 0400), unlike its argv."""
        return {SWEEP_ARGUMENTS: json.dumps(asdict(self))}

    @classmethod
    def take(cls, environ: MutableMapping[str, str] = os.environ) -> SweepArguments | None:
        """The arguments a sweep left in this worker's environment, taken out of it (the worker's
        own children need not hold them); None in a worker started by hand."""
        text = environ.pop(SWEEP_ARGUMENTS, None)
        return None if text is None else cls(**json.loads(text))


def worker_command(plan: SweepPlan, index: int, deadline: float | None, held: bool = False) -> tuple[list[str], dict[str, str]]:
    """`sweeper worker` for one slot: its argv, which holds nothing of the sweep's command line,
    and the environment entries that carry that command line to it."""
    command = [sys.executable, "-m", "sweeper.cli", "worker", "--index", str(index), "--no-validate"]
    if held:
        command.append("--held")
    if deadline is not None:
        command += ["--deadline", repr(deadline)]
    sweep = SweepArguments(list(plan.command_line), list(plan.config_dirs), os.getpid())
    return command, sweep.environment()


def end_with_parent(parent: int) -> None:
    """SIGTERM to this process when `parent`, the sweep that started it, ends, however it ends: a
    worker left behind by a killed sweep would go on taking trials that nobody watches. On Linux
    the kernel sends it (prctl PR_SET_PDEATHSIG); elsewhere a thread looks for the parent every
    PARENT_CHECK_SECONDS. A parent that ended before this was asked for has already left the
    process to another parent: it is looked for once more, after asking."""
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(parent,), name="parent watch", daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class LocalWorker:
    label: str
    log: Path
    process: subprocess.Popen
    log_size: int | None = None  # the log's size before this worker (None: it is new), kept whole by discard()

    def poll(self) -> int | None:
        return self.process.poll()

    def go(self) -> None:
        """Let a worker started held (`sweeper worker --held`) open the study and take trials."""
        if self.process.stdin is None:
            return
        try:
            self.process.stdin.write(b"go\n")
            self.process.stdin.close()
        except BrokenPipeError:  # it ended meanwhile: its exit code and log say why
            pass

    def discard(self) -> None:
        """End a held worker of a sweep that stops before it begins, and take back what it wrote
        to its log (a new log is removed): it has touched no store, so killing it loses nothing."""
        self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.log_size is None:
            self.log.unlink(missing_ok=True)
        else:  # the log of an earlier run of the sweep: as it was
            os.truncate(self.log, self.log_size)

    def stop(self) -> None:
        """Stop the worker as Ctrl-C does: it marks its running trial failed (so a resumed sweep
        runs it again at once, instead of waiting for its heartbeat to go stale) and sends its
        records. One still running after STOP_SECONDS is killed."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def check_launcher(plan: SweepPlan) -> None:
    """The launcher's settings (worker slots here, or cluster jobs), and the results_dir their
    logs and the sweep's stores go to, checked before anything is created: a bad one must not
    leave a study or an MLflow run behind."""
    name = plan.cfg.launcher.name
    if name == "local":
        _local_slots(plan)
    elif name == "slurm":
        check_slurm(plan.cfg.launcher)
    else:
        raise ConfigError(f"launcher.name: {name!r} is not a launcher; use launcher=local or launcher=slurm.")


def launch_workers(plan: SweepPlan, logs: Path, deadline: float | None) -> list[WorkerHandle]:
    """Start the sweep's workers as `launcher.name` says."""
    check_launcher(plan)
    if plan.cfg.launcher.name == "local":
        return _launch_local(plan, _local_slots(plan), logs, deadline)
    return _launch_jobs(plan, plan.cfg.launcher, deadline)


def launch_held_workers(plan: SweepPlan, logs: Path, deadline: float | None) -> list[LocalWorker]:
    """Start the local workers before the sweep is checked and its study exists: each imports
    and loads what a trial needs (seconds of a worker's start) while the sweep checks, then waits
    for `go()`; a sweep that stops first ends them with `discard()`. None for cluster jobs, which
    are submitted once the sweep may start."""
    if plan.cfg.launcher.name != "local":
        return []
    return _launch_local(plan, _local_slots(plan), logs, deadline, held=True)


def _local_slots(plan: SweepPlan) -> list[Slot]:
    return plan_slots(plan.cfg.sweep, visible_gpus(), usable_cores())


def _launch_local(plan: SweepPlan, slots: Sequence[Slot], logs: Path, deadline: float | None, held: bool = False) -> list[LocalWorker]:
    logs.mkdir(parents=True, exist_ok=True)
    workers: list[LocalWorker] = []
    for slot in slots:
        log = logs / f"worker-{slot.index}.log"
        log_size = log.stat().st_size if log.exists() else None
        command, sweep = worker_command(plan, slot.index, deadline, held)
        with open(log, "ab") as out:  # the child keeps its own descriptor
            process = subprocess.Popen(
                command,
                env={**os.environ, **slot.env(), **sweep},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if held else subprocess.DEVNULL,  # a held worker waits for "go" there
            )
        workers.append(LocalWorker(f"worker {slot.index} ({slot.label})", log, process, log_size))
    return workers


def _launch_jobs(plan: SweepPlan, launcher: DictConfig, deadline: float | None) -> list[WorkerHandle]:
    settings = check_slurm(launcher)
    sweep = SweepArguments(list(plan.command_line), list(plan.config_dirs), os.getpid())
    return submit_jobs(settings, plan.name, run_job, [(index, deadline) for index in range(settings.jobs)], sweep.environment())


def run_job(index: int, deadline: float | None) -> int:
    """A cluster job's body: one worker on whatever devices the scheduler gave the job; its exit
    code as `sweeper worker`'s. SIGINT (the sweep stopping its jobs) stops the worker as Ctrl-C
    does. SIGTERM (SLURM ending the job: its time limit, scancel, preemption) ends it at once, as
    SIGKILL would, so that its trial is failed by its heartbeat and runs again in another job;
    submitit would only log it. submitit's own warning before the time limit (SIGUSR2) would
    raise wherever the worker is: it is ignored, and the time limit's SIGTERM decides."""
    stop = StopRequest()
    stop.install()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    sweep = SweepArguments.take()
    if sweep is None:
        raise RuntimeError(
            f"the sweep's arguments did not reach this job ({SWEEP_ARGUMENTS} is unset): submit with the "
            f"environment exported (sbatch --export=ALL, SLURM's default)"
        )
    try:
        run_worker(plan_sweep(sweep.overrides, sweep.config_dirs, validate=False), index=index, deadline=deadline, stop=stop)
    except KeyboardInterrupt:  # from a trial's training: Optuna has marked the trial failed
        pass
    return stop.exit_code if stop.requested else 0
