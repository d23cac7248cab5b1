"""Where a sweep's workers run: processes on this machine, or jobs on a SLURM cluster.

Both start the same worker (`sweeper worker`, or its function in a job) with the sweep's
command line, so a worker recomposes exactly the parent's config. A launcher returns handles
the parent watches: `poll()` is None while the worker runs, then its exit code.

A local worker gets that command line in its environment, not in its argv: any user of the
machine can read any process's argv (`ps`), and an override may hold a password. A local worker
also ends when the sweep that started it ends, however it ends (SIGKILL included).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

from sweeper.config import ConfigError
from sweeper.records.spool import SPOOL_ENV, spool_folder
from sweeper.sweep.plan import SweepPlan, check_trainer, plan_sweep
from sweeper.sweep.slurm_jobs import check_slurm, submit_jobs
from sweeper.sweep.warm import FIRST_LOADS, WarmServer, can_fork_workers
from sweeper.sweep.workers import Slot, StopRequest, plan_slots, run_worker, usable_cores, visible_gpus

__all__ = [
    "SweepArguments",
    "WorkerHandle",
    "check_launcher",
    "check_trainer_beside",
    "launch_held_workers",
    "launch_workers",
    "worker_command",
]

STOP_SECONDS = 15  # for a stopped worker to mark its trial failed and send its records
CHECK_INDEX = -1  # the warm server's job that checks the sweep with its trainer (not a worker)
CHECK_SECONDS = 3600.0  # it builds one trial: data and model; the sweep's end ends it sooner
EXIT_REFUSED = 2  # a command's exit code for a setting it refuses, said in one line
SWEEP_ARGUMENTS = "SWEEPER_SWEEP_ARGUMENTS"  # the environment variable that carries them


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


def worker_command(
    plan: SweepPlan, index: int, deadline: float | None, held: bool = False, parent: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """`sweeper worker` for one slot: its argv, which holds nothing of the sweep's command line,
    and the environment entries that carry that command line to it. `parent`: the process whose
    end ends the worker (default this one, the sweep)."""
    command = [sys.executable, "-m", "sweeper.cli", "worker", "--index", str(index), "--no-validate"]
    if held:
        command.append("--held")
    if deadline is not None:
        command += ["--deadline", repr(deadline)]
    sweep = SweepArguments(list(plan.command_line), list(plan.config_dirs), os.getpid() if parent is None else parent)
    return command, sweep.environment()


@dataclass
class LocalWorker:
    label: str
    log: Path
    process: subprocess.Popen
    log_size: int | None = None  # the log's size before this worker (None: it is new), kept whole by discard()
    went: bool = False  # told to go (a held worker)

    def poll(self) -> int | None:
        return self.process.poll()

    def pid(self) -> int | None:
        return self.process.pid

    def go(self) -> None:
        """Let a worker started held (`sweeper worker --held`) open the study and take trials
        (once: a worker told already is left as it is)."""
        if self.process.stdin is None or self.went:
            return
        self.went = True
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


@dataclass
class WarmWorker:
    """A local worker forked by the sweep's warm server (sweeper.sweep.warm) when the sweep says
    go; started cold, as a LocalWorker, if the server is gone by then."""

    label: str
    log: Path
    server: WarmServer
    index: int
    command: list[str]  # `python -m sweeper.cli worker ...`
    env: dict[str, str]
    cold: Callable[[], LocalWorker]  # the same worker started as a process of its own
    started: bool = False
    fallback: LocalWorker | None = None
    log_size: int | None = None  # the log's size before this worker: what earlier runs wrote

    @property
    def went(self) -> bool:
        return self.started

    def go(self) -> None:
        if self.started:
            return
        if not self.server.start(self.index, self.command, self.env, self.log):
            self.fallback = self.cold()
        self.started = True

    def poll(self) -> int | None:
        if self.fallback is not None:
            return self.fallback.poll()
        return self.server.exit_code(self.index) if self.started else None

    def pid(self) -> int | None:
        if self.fallback is not None:
            return self.fallback.pid()
        return self.server.worker_pid(self.index) if self.started else None

    def discard(self) -> None:
        """Before go nothing is forked: ending the server ends everything."""
        self.server.kill()

    def stop(self) -> None:
        """As LocalWorker.stop: SIGINT, then SIGKILL after STOP_SECONDS. The server ends once its
        workers have (no worker is asked for after the first is stopped)."""
        if self.fallback is not None:
            self.fallback.stop()
        elif self.started and self.poll() is None:
            pid = self.server.worker_pid(self.index)
            if pid is not None:
                # The worker may end between the look above and the signal (Ctrl-C reaches it too).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
                if self.server.wait_exit(self.index, STOP_SECONDS) is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    self.server.wait_exit(self.index, STOP_SECONDS)
        self.server.close()


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


def launch_held_workers(plan: SweepPlan, logs: Path, deadline: float | None, server: WarmServer | None = None) -> list[LocalWorker]:
    """Start the local workers before the sweep is checked and its study exists: each imports
    and loads what a trial needs (seconds of a worker's start) while the sweep checks, then waits
    for `go()`; a sweep that stops first ends them with `discard()`. They are forked from the
    warm server `server` where one was started early (sweeper.sweep.warm.early_server). None for
    cluster jobs, which are submitted once the sweep may start."""
    if plan.cfg.launcher.name != "local":
        return []
    if plan.cfg.launcher.get("warm", False) and can_fork_workers():
        return _launch_warm(plan, _local_slots(plan), logs, deadline, server)
    return _launch_local(plan, _local_slots(plan), logs, deadline, held=True)


def _launch_warm(plan: SweepPlan, slots: Sequence[Slot], logs: Path, deadline: float | None, server: WarmServer | None) -> list[WarmWorker]:
    """The server (started now, or early) loads what a trial needs while the sweep checks; the
    workers are forked from it at go()."""
    server = (server or WarmServer(FIRST_LOADS)).take()
    server.load(str(plan.cfg.sweep.trainer))
    # The plan every worker (and the trainer's check) composes is composed once, in the server.
    server.prepare("sweeper.commands.worker:prepare_plan", {**os.environ, **worker_command(plan, 0, deadline, parent=server.pid)[1]})
    logs.mkdir(parents=True, exist_ok=True)
    workers = []
    for slot in slots:
        command, sweep = worker_command(plan, slot.index, deadline, parent=server.pid)
        cold = functools.partial(_launch_local, plan, [slot], logs, deadline)
        log = logs / f"worker-{slot.index}.log"
        workers.append(
            WarmWorker(
                f"worker {slot.index} ({slot.label})",
                log,
                server,
                slot.index,
                command,
                {**os.environ, **slot.env(), **sweep, **_records(logs)},
                lambda cold=cold: cold()[0],
                log_size=log.stat().st_size if log.exists() else None,
            )
        )
    return workers


def check_trainer_beside(plan: SweepPlan, held: Sequence[LocalWorker | WarmWorker]) -> Callable[[], None]:
    """Start the trainer's checks of the sweep (`check_trainer`: it loads the trainer, torch for
    sweeper's own, and builds one trial) in a process forked from the warm server, which has
    loaded the trainer already, while this process checks the rest; return the wait for their
    outcome, which raises the ConfigError they found. The sweep's process then never loads
    torch. Without a warm server, or when the forked check fails otherwise than with a
    ConfigError, they run here (where such a failure is shown as it is)."""
    server = held[0].server if held and isinstance(held[0], WarmWorker) else None
    if server is None:
        return lambda: check_trainer(plan)
    handle, name = tempfile.mkstemp(prefix="sweeper-check-", suffix=".log")  # not under results/: a refused sweep writes nothing there
    os.close(handle)
    log = Path(name)
    command, sweep = worker_command(plan, CHECK_INDEX, None, parent=server.pid)
    if not server.start(CHECK_INDEX, [*command, "--check"], {**os.environ, **sweep}, log, early=True):
        log.unlink(missing_ok=True)
        return lambda: check_trainer(plan)

    def outcome() -> None:
        code = server.wait_exit(CHECK_INDEX, CHECK_SECONDS)
        said = log.read_text(errors="replace").strip().splitlines()
        log.unlink(missing_ok=True)
        if code == 0:
            return
        refused = said[-1].partition(": error: ")[2] if code == EXIT_REFUSED and said else ""
        if refused:
            raise ConfigError(refused)
        check_trainer(plan)

    return outcome


def _records(sweep_folder: Path) -> dict[str, str]:
    """A local worker's records go to this machine's recorder, the sweep's (see sweeper.records.spool)."""
    return {SPOOL_ENV: str(spool_folder(sweep_folder).resolve())}


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
                env={**os.environ, **slot.env(), **sweep, **_records(logs)},
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
