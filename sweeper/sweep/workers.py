"""Sweep workers: device slots, and the ask -> train -> tell loop each worker process runs.

A slot is one worker process: a GPU (or a share of one, `sweep.workers_per_device`), or a few CPU
cores where there is no GPU. A worker's GPU is chosen by CUDA_VISIBLE_DEVICES in its environment,
set before the process starts, so torch in it sees that GPU alone (as cuda:0).

Each worker loops with no barrier between trials: under the sweep's claim lock it counts the
finished and running trials, starts one if the sweep still needs it (`study.optimize` for one
trial, which keeps the trial's heartbeat beating), and otherwise waits for running trials (one
of them may fail and need redoing) or stops. A trial that raises or diverges fails alone, its
reason kept in the trial's `reason` attribute. A worker stopped (SIGSTOP, a stalled machine) past
storage.grace_period finds its trial failed by the others' heartbeat check and queued again when
it wakes: it says so and goes on with the next one.

With `sweep.fuse=N > 1` a worker claims up to N trials at once (each its own Optuna trial, with
its own heartbeat, MLflow child run and pruning), trains those whose configs allow it as one
fused model (`sweeper.training.fused`, through the trainer's `train_many`), and tells each its own
outcome (`Outcome`, `study.tell`). sweep.fuse=1 is the one-trial loop above, unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize beats with
from optuna.trial import TrialState

from sweeper.boundary.recorded_sweep import recorded_run_location
from sweeper.config import compose_config
from sweeper.config.rules import warn_oversubscribed
from sweeper.secrets import mask_text
from sweeper.sweep.counts import Counts, Move, count_trials, fail_stale_trials, next_move
from sweeper.sweep.lr_anchor import recorded_plan
from sweeper.sweep.plan import SweepPlan
from sweeper.sweep.sampling import PruningReporter
from sweeper.sweep.storage import StorageSpec
from sweeper.sweep.study import open_study
from sweeper.sweep.trainer import load_trainer
from sweeper.training.checkpoints import checkpoint_every, checkpoints_on, for_sweep_trial
from sweeper.training.saved_models import best_in_study, keepers, save_model_setting
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult
from sweeper.trial.spec import FusingTrainer, trial_spec

__all__ = [
    "Outcome",
    "Slot",
    "StopRequest",
    "TrialAttributesWriter",
    "TrialFailed",
    "TrialTakenOver",
    "plan_slots",
    "record_outcome",
    "kept_whole",
    "reporters_for",
    "run_fused",
    "run_trial",
    "start_trial",
    "run_worker",
    "tracking_module",
    "usable_cores",
    "visible_gpus",
]

TrainFn = Callable[[DictConfig, Sequence[Reporter]], TrialResult]
MAX_AUTO_CPU_WORKERS = 8  # beyond this, CPU workers mostly add memory (a torch process each)
CHANGE_LOOK_SECONDS = 0.05  # how often a waiting worker looks whether an embedded study's file changed


# --- slots ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None = None  # the CUDA device this worker sees alone; None: a CPU slot
    threads: int = 1  # its share of the CPU cores: torch's intra-op threads

    @property
    def label(self) -> str:
        return f"gpu {self.gpu}" if self.gpu is not None else f"cpu x{self.threads}"

    def env(self) -> dict[str, str]:
        """Environment of the worker process, in place before torch is imported in it."""
        threads = str(self.threads)
        # An empty CUDA_VISIBLE_DEVICES hides every GPU from a CPU worker.
        return {"CUDA_VISIBLE_DEVICES": self.gpu or "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def visible_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries, else every GPU torch sees."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        # "" and "-1" hide every GPU; entries may be indices, GPU-UUIDs or MIG ids.
        entries = [e.strip() for e in listed.split(",") if e.strip()]
        return [] if entries[:1] == ["-1"] else entries
    return [str(i) for i in range(_gpu_count())]


def _gpu_count() -> int:
    """How many GPUs this machine has, without importing torch where it is not loaded yet: the
    sweep's process plans and watches, and importing torch would cost it a second or more."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.device_count()
    nvidia = Path("/proc/driver/nvidia/gpus")  # the NVIDIA driver: one folder per GPU
    if nvidia.is_dir():
        return sum(1 for _ in nvidia.iterdir())
    if shutil.which("nvidia-smi") is None and shutil.which("rocm-smi") is None:
        return 0  # no GPU driver here
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def plan_slots(sweep: DictConfig | Mapping, gpus: Sequence[str], cores: int) -> list[Slot]:
    """Worker slots for this machine from `sweep.workers`, `workers_per_device`, `cpu_threads`."""
    per_device, workers, threads = sweep["workers_per_device"], sweep["workers"], sweep["cpu_threads"]
    warn_oversubscribed(workers, cores)  # here, where the cores are counted
    if gpus:
        count = len(gpus) * per_device if workers == "auto" else workers
        # GPU workers share the cores too (data loading, the optimizer on small models).
        threads = max(1, cores // count) if threads == "auto" else threads
        # Round-robin, so a count below the number of GPUs still spreads over them.
        return [Slot(i, gpu=gpus[i % len(gpus)], threads=threads) for i in range(count)]
    if workers == "auto":
        workers = max(1, min(MAX_AUTO_CPU_WORKERS, cores // (1 if threads == "auto" else threads)))
    if threads == "auto":
        threads = max(1, cores // workers)
    return [Slot(i, threads=threads) for i in range(workers)]


# --- one trial --------------------------------------------------------------------------------


class TrialFailed(RuntimeError):
    """A trial that ended without a result (diverged, or failed inside the trainer)."""


class TrialTakenOver(RuntimeError):
    """The trial was failed while it ran, by the heartbeat check of another worker (this one was
    stopped or stalled for longer than storage.grace_period), and queued again: it runs elsewhere,
    and what this worker would record of it can no longer be recorded."""


def _record(trial: optuna.Trial, key: str, value: Any) -> None:
    """trial.set_user_attr, for a trial that may have been taken over meanwhile."""
    try:
        trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise TrialTakenOver(f"trial {trial.number} was failed by the heartbeat check while it ran") from None


class TrialAttributesWriter(Reporter):
    """Keeps the trial's device and epochs done in the study, for the live view. Being the first
    reporter to write to the study at each epoch, it is the one that finds a trial taken over:
    the trial stops there (TrialTakenOver) instead of training to its end for nothing."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_start(self, event: StartEvent) -> None:
        _record(self.trial, "device", event.device)

    def on_epoch(self, event: EpochEvent) -> None:
        _record(self.trial, "epochs", event.epoch + 1)


def reporters_for(trial: optuna.Trial, trial_cfg: DictConfig, plan: SweepPlan, overrides: Sequence[str]) -> list[Reporter]:
    """Everything that listens to one trial. The one place to add a listener."""
    reporters: list[Reporter] = [TrialAttributesWriter(trial)]
    if not plan.objectives.several:  # Optuna cannot prune multi-objective studies
        reporters.append(PruningReporter(trial))
    tracking = tracking_module()
    if tracking is not None:  # MLflow: a child run of the sweep's run
        recorder = tracking.trial_reporter(
            trial_cfg,
            study_name=plan.name,
            trial_number=trial.number,
            overrides=overrides,
            extra_tags={"worker": trial.user_attrs["worker"]},
            location=recorded_run_location(trial.study.user_attrs),  # a shared study's record: checked
        )
        best = lambda result: best_in_study(trial.study, plan.objectives.directions, plan.objectives.values(result))  # noqa: E731
        reporters += [*keepers(save_model_setting(plan.cfg), recorder, best), recorder]  # weights before the run ends
    if checkpoints_on(plan.cfg):
        reporters.append(for_sweep_trial(plan.cfg.results_dir, plan.name, trial, checkpoint_every(plan.cfg)))
    return reporters


def tracking_module() -> Any:
    """sweeper.records.tracking, or None where this installation has none. It keeps the MLflow records
    (each of its entry points a no-op under tracking.enabled=false) and writes the sweep's report."""
    try:
        from sweeper.records import tracking
    except ImportError:
        return None
    return tracking


@dataclass(frozen=True)
class Outcome:
    """What Optuna is told of a trial: its state, and its value(s) when it completed."""

    state: TrialState
    values: float | list[float] | None = None
    reason: str | None = None


def start_trial(trial: optuna.Trial, plan: SweepPlan) -> tuple[list[str], list[str]]:
    """Record who runs the trial and its overrides; return (overrides, overrides as recorded)."""
    overrides = [*plan.overrides, *plan.space.suggest(trial)]
    recorded = [mask_text(o) for o in overrides]
    _record(trial, "overrides", recorded)
    _record(trial, "worker", f"{socket.gethostname()}:{os.getpid()}")
    return overrides, recorded


def record_outcome(trial: optuna.Trial, result: TrialResult, plan: SweepPlan) -> Outcome:
    """Record how the trial ended in its user attrs; the outcome Optuna is to be told."""
    _record(trial, "status", result.status)
    _record(trial, "seconds", round(result.seconds, 3))
    if result.status == "pruned":
        return Outcome(TrialState.PRUNED, reason=f"pruned after {len(result.epochs)} epoch(s)")
    if result.status != "finished":
        reason = _reason(result.reason or result.status)
        _record(trial, "reason", reason)
        return Outcome(TrialState.FAIL, reason=reason)
    return Outcome(TrialState.COMPLETE, plan.objectives.values(result))


def kept_whole(result: TrialResult, reporters: Sequence[Reporter]) -> TrialResult:
    """`result`, failed when a reporter could not write what it keeps of the trial (its disk
    full): Optuna is never told a trial finished whose records are lost; it runs again."""
    unwritten = [what for reporter in reporters if (what := reporter.unwritten())]
    if not unwritten or result.status not in ("finished", "pruned"):
        return result
    lost = f"{', '.join(unwritten)} could not be written: the disk is full; the trial runs again on resume"
    print(f"sweeper: trial failed: {lost}", flush=True)
    return dataclasses.replace(result, status="failed", reason=lost)


def run_trial(trial: optuna.Trial, plan: SweepPlan, train: TrainFn) -> float | list[float]:
    """The objective: compose the trial's config from its overrides, train it, return its value(s)."""
    overrides, recorded = start_trial(trial, plan)
    try:
        trial_cfg = compose_config(overrides, plan.config_dirs)
        reporters = reporters_for(trial, trial_cfg, plan, recorded)
        result = kept_whole(train(trial_cfg, reporters), reporters)
    except Exception as error:
        _record(trial, "reason", _reason(f"{type(error).__name__}: {error}"))
        raise
    outcome = record_outcome(trial, result, plan)
    if outcome.state == TrialState.PRUNED:  # study.optimize learns a trial's end from exceptions
        raise optuna.TrialPruned(outcome.reason)
    if outcome.state == TrialState.FAIL:
        raise TrialFailed(outcome.reason)
    return outcome.values


def run_fused(study: optuna.Study, trials: Sequence[optuna.Trial], plan: SweepPlan, trainer: FusingTrainer, stop: StopRequest) -> None:
    """Train claimed trials together, as few fused runs as their configs allow, and tell each its
    own outcome. Every trial keeps its own heartbeat from its claim to its end, its own reporters
    (MLflow child run, pruning) and its own result. A freed slot (a member pruned, diverged or
    failed) is not refilled: a trial that joined mid-run would start mid-way through the others'
    data order, so it would neither share their batches (the paired comparison) nor train as it
    would alone; the next claim comes when the run ends."""
    told: set[int] = set()

    def tell(trial: optuna.Trial, outcome: Outcome) -> None:
        told.add(trial.number)
        if outcome.state == TrialState.FAIL and outcome.reason:
            _record_if_held(trial, plan, "reason", outcome.reason)
        study.tell(trial, outcome.values, state=outcome.state, skip_if_finished=True)

    with ExitStack() as heartbeats:
        for trial in trials:  # Optuna's own heartbeat, as study.optimize beats for its one trial
            heartbeats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        try:
            waiting: list[tuple[optuna.Trial, DictConfig, list[str]]] = []
            for trial in trials:
                try:
                    overrides, recorded = start_trial(trial, plan)
                    waiting.append((trial, compose_config(overrides, plan.config_dirs), recorded))
                except TrialTakenOver:
                    _say_taken_over(trial, plan)
                    told.add(trial.number)
                except Exception as error:  # noqa: BLE001 - this trial's config fails it alone
                    tell(trial, Outcome(TrialState.FAIL, reason=_reason(f"{type(error).__name__}: {error}")))
            for group in _fusable_groups(waiting, trainer):
                specs = [trial_spec(cfg) for _, cfg, _ in group]
                reporters = [[*reporters_for(trial, cfg, plan, recorded), stop] for trial, cfg, recorded in group]
                try:
                    results = trainer.train_many(specs, reporters)
                except Exception as error:  # noqa: BLE001 - a setting that stops the run before training
                    failed = Outcome(TrialState.FAIL, reason=_reason(f"{type(error).__name__}: {error}"))
                    for trial, _, _ in group:
                        tell(trial, failed)
                    continue
                for (trial, _, _), result, heard in zip(group, results, reporters):
                    try:
                        tell(trial, record_outcome(trial, kept_whole(result, heard), plan))
                    except TrialTakenOver:
                        _say_taken_over(trial, plan)
        finally:  # Ctrl-C, or anything unforeseen: what was claimed and not told fails, to run again
            for trial in trials:
                if trial.number not in told:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def _fusable_groups(
    waiting: Sequence[tuple[optuna.Trial, DictConfig, list[str]]], trainer: FusingTrainer
) -> list[list[tuple[optuna.Trial, DictConfig, list[str]]]]:
    """The trials in groups that can each train as one fused run (each joins the first that takes it)."""
    groups: list[list[tuple[optuna.Trial, DictConfig, list[str]]]] = []
    for entry in waiting:
        for group in groups:
            if trainer.why_not_fused([cfg for _, cfg, _ in group] + [entry[1]]) is None:
                group.append(entry)
                break
        else:
            groups.append([entry])
    return groups


def _record_if_held(trial: optuna.Trial, plan: SweepPlan, key: str, value: Any) -> None:
    try:
        _record(trial, key, value)
    except TrialTakenOver:
        _say_taken_over(trial, plan)


def _say_taken_over(trial: optuna.Trial, plan: SweepPlan) -> None:
    print(
        f"sweeper: trial {trial.number} was taken over: this worker was stopped or stalled "
        f"for longer than storage.grace_period ({plan.storage.grace_period} s), so the sweep "
        f"failed the trial and queued it again; going on with the next one.",
        flush=True,
    )


def _reason(text: str) -> str:
    return mask_text(text)[:1000]  # user attrs are stored with every trial: keep them short


# --- the worker loop --------------------------------------------------------------------------


class StopRequest(Reporter):
    """Ctrl-C (SIGINT) or SIGTERM in a worker process, acted on where it is safe.

    SIGINT comes from the terminal, and from the sweep that stops its workers; SIGTERM from kill,
    a scheduler, or the kernel when the sweep that started the worker dies. Either reaches a
    worker at any moment, possibly inside a library holding a lock or inside Optuna's own
    bookkeeping, where an exception could hang the worker or leave its trial running in the
    study. So the signal only sets a flag. A running trial stops at its next reported step or
    epoch, from the trainer's own loop (the trainer marks it failed, Optuna records it so, and a
    resumed sweep runs it again); the worker starts no other trial.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the signal that asked

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._interrupt)

    def _interrupt(self, signum: int, frame: object) -> None:
        self.requested = True
        self.signum = signum

    @property
    def what(self) -> str:
        return "interrupted" if self.signum in (None, signal.SIGINT) else f"stopped by {signal.Signals(self.signum).name}"

    @property
    def exit_code(self) -> int:
        """As a shell reports a process the signal ended: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)

    def check(self) -> None:
        """Stop here (KeyboardInterrupt) if a stop was asked for."""
        if self.requested:
            raise KeyboardInterrupt

    def on_step(self, event: StepEvent) -> None:
        self.check()

    def on_epoch(self, event: EpochEvent) -> bool:
        self.check()
        return False


def run_worker(
    plan: SweepPlan,
    *,
    index: int = 0,
    deadline: float | None = None,
    train: TrainFn | None = None,
    stop: StopRequest | None = None,
) -> int:
    """Run trials until the sweep has n_trials finished ones (or the deadline, a `stop` request,
    or sweep.max_failures failed trials since it started); return how many ran.

    `index` offsets the sampler's seed so parallel workers draw differently; `deadline` is a
    time.time() after which no trial starts.
    """
    worker = _Worker(plan, index, train, stop or StopRequest())
    while not worker.stop.requested:
        with worker.claim:  # each move lets go of the claim as soon as others may count again
            worker.counted = worker.plan.storage.file_state()  # before the count: see Worker.wait
            counts = count_trials(worker.study)
            out_of_time = deadline is not None and time.time() >= deadline
            failed_too_often = counts.failed - worker.failed_before >= worker.plan.max_failures
            move = next_move(counts, worker.plan.n_trials, out_of_time, failed_too_often, worker.plan.fuse)
            if not _MOVES[move](worker, counts):
                break
    return worker.ran


class _Worker:
    """One worker's loop: its study, its claim on the sweep, and what it has done; one method per
    Move, each True to go on and False to stop."""

    def __init__(self, plan: SweepPlan, index: int, train: TrainFn | None, stop: StopRequest) -> None:
        self.trainer = load_trainer(plan.cfg) if train is None or plan.fuse > 1 else None
        self.train = train or self.trainer.train
        self.index = index
        self.study = open_study(plan, create=False, worker=index)
        self.plan = recorded_plan(plan, self.study)  # search.lr.high=auto: the ranges the sweep recorded
        self.claim = self.plan.storage.claim(self.plan.name)
        self.stop = stop
        # Failures count from this worker's start, so a sweep resumed after its cause was fixed
        # (or after Ctrl-C, which fails the trials it stops) starts with a clean slate.
        self.failed_before = count_trials(self.study).failed
        self.ran = 0
        self.counted: tuple[int, int] | None = None  # the embedded study's file as it was counted last
        self._running: optuna.Trial | None = None

    def run_one(self, counts: Counts) -> bool:
        """Train one trial (study.optimize for one, which keeps the trial's heartbeat beating)."""
        self._running = None
        try:
            self.study.optimize(self._objective, n_trials=1, catch=(Exception,))
        except Exception:
            # Optuna cannot tell a trial that is already finished; one failed by the
            # heartbeat check has been queued again, and the sweep goes on without it.
            if self._running is None or not _finished_meanwhile(self.study, self._running):
                raise
            _say_taken_over(self._running, self.plan)
        self.ran += 1
        return True

    def _objective(self, trial: optuna.Trial) -> float | list[float]:
        self._running = trial
        self.claim.release()  # the trial exists now: others may count it and start theirs
        self.stop.check()  # asked to stop while the trial was being made: it fails, to run again
        # The stop request listens last, so the other reporters have recorded the step or epoch.
        return run_trial(trial, self.plan, lambda cfg, reporters: self.train(cfg, [*reporters, self.stop]))

    def run_fused(self, counts: Counts) -> bool:
        """Claim up to sweep.fuse trials (each a RUNNING trial others count), let go of the claim,
        and train them together."""
        fail_stale_trials(self.study)  # as study.optimize does before it asks
        free = self.plan.n_trials - counts.finished - counts.running
        claimed = [self.study.ask() for _ in range(min(self.plan.fuse, free))]
        self.claim.release()
        run_fused(self.study, claimed, self.plan, self.trainer, self.stop)
        self.ran += len(claimed)
        return True

    def wait(self, counts: Counts) -> bool:
        """Wait for the running trials (one may fail and need redoing)."""
        # A dead worker's trial counts as running until its heartbeat goes stale: look for
        # those here too, or waiting workers would wait on it for ever. Under the claim, as
        # study.optimize looks before it asks: a worker that counted between a failure and its
        # retry would start a new trial in the retry's place.
        fail_stale_trials(self.study)
        self.claim.release()
        # Until the study is no longer as it was counted: a trial that ended after the count (the
        # last one, most often) wakes the worker at once, not a poll later.
        _sleep_until_changed(self.plan.storage, float(self.plan.cfg.sweep.poll), self.counted)
        return True

    def finish(self, counts: Counts) -> bool:
        """Stop, saying why if it is too many failures."""
        failed = counts.failed - self.failed_before
        if failed >= self.plan.max_failures and counts.finished < self.plan.n_trials:
            print(
                f"worker {self.index}: stopped: {failed} trials failed since it started "
                f"(sweep.max_failures={self.plan.max_failures}); their reasons are in the study and above.",
                flush=True,
            )
        return False


_MOVES: dict[Move, Callable[[_Worker, Counts], bool]] = {
    Move.RUN: _Worker.run_one,
    Move.FUSE: _Worker.run_fused,
    Move.WAIT: _Worker.wait,
    Move.STOP: _Worker.finish,
}


def _sleep_until_changed(storage: StorageSpec, seconds: float, since: tuple[int, int] | None) -> None:
    """Sleep `seconds`, or less once the embedded study's file is no longer as it was `since` (its
    state when the worker counted the trials: a trial ended, most likely, and the worker stops,
    or runs it again, at once). The sweep ends when its last worker has: a waiting worker that
    slept on after the last trial held the command up by up to sweep.poll."""
    if storage.path is None:  # a server's study: no file to look at
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while storage.file_state() == since and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, CHANGE_LOOK_SECONDS))


def _finished_meanwhile(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether the study holds `trial` as finished (failed by the heartbeat check) although this
    worker could not tell it anything."""
    return any(t.number == trial.number and t.state.is_finished() for t in study.get_trials(deepcopy=False))
