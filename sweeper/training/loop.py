"""The training loop: one skeleton that trains one trial (`trainer.run`) or several trials of one
architecture as one stacked model (`fused.run_many`).

    results = run_loop(engine)   # engine: trainer.OneTrial, or a fused.FusedRun

The skeleton owns the order of events; an `Engine` owns the model(s) and what one step does. The
members of a run (one trial, or the trials of a fused run) train in lock step over the phases of
one schedule: every batch is one step of every member still training. Each member is still a whole
trial: its own reporters hear its own steps and epochs (`sweeper.trial.events`), any of them may
stop it after an epoch (pruned), a non-finite loss ends it alone (diverged), and a reporter that
raises fails it alone (failed, with the reason). An exception in the shared work (a step, an
evaluation) fails every member still training; Ctrl-C does too, and still propagates. A member
that stops leaves the engine's stack (`Engine.drop_stopped`); the others train on.

The schedule of a member whose shape follows the validation objective (torch_plateau) is fed its
objective after every epoch (`Member.follow_objective`), and after a restore the objectives of
the restored epochs: the lrs of the epochs after them are what torch's scheduler, fed the same
objectives, would set (a resumed trial's state is its recorded objectives, nothing else).

Hooks (`TrainerHook`) are reporters that also see a trial's state: a member with a trial of its
own (the one-trial engine's) hands it to them after every reporter heard `on_start`, asks them
to `restore` it from where an earlier attempt left off (a checkpoint: the restored steps and
epochs are replayed to the reporters, epoch by epoch, and training goes on after them), and tells
them after every epoch that no reporter stopped (`after_epoch`: a checkpoint). A fused member's
weights are a row of a stack while it trains, so its hooks see its trial only as it finishes
(`Engine.finish`: the model keeper saves it there); fused members keep no checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent, TrainerHook, TrialResult
from sweeper.trial.schedule import Phase, TrialSchedule

__all__ = ["Engine", "Member", "run_loop"]

logger = logging.getLogger(__name__)


@dataclass
class Member:
    """One trial of a run: its reporters and its result, and what its hooks are handed."""

    start: StartEvent
    schedule: TrialSchedule
    reporters: Sequence[Reporter]
    result: TrialResult
    started: float  # time.perf_counter() when preparing it began
    trial: Any = None  # handed to its hooks at the start (None: they see it only as it finishes)
    active: bool = True
    hooks: list[TrainerHook] = field(init=False)

    def __post_init__(self) -> None:
        self.hooks = [reporter for reporter in self.reporters if isinstance(reporter, TrainerHook)]

    def tell(self, call: Callable[[Any], object], listeners: Sequence[Reporter] | None = None) -> bool:
        """Call every reporter (or `listeners`) of an active member; True if any asks to stop. One
        that raises fails this member alone (Ctrl-C still propagates)."""
        if not self.active:
            return False
        try:
            return any([call(listener) for listener in (self.reporters if listeners is None else listeners)])
        except Exception as error:
            self.stop("failed", f"{type(error).__name__}: {error}")
            return False

    def follow_objective(self) -> None:
        """Feed the schedule the objective of every epoch so far: a shape that follows it
        (torch_plateau) sets the lrs of the epochs after them from it."""
        self.schedule = self.schedule.fed([epoch.objective for epoch in self.result.epochs])

    def stop(self, status: str, reason: str | None) -> None:
        """End the member: its status, then its reporters' on_end, once. It leaves the engine's
        stack at the next `drop_stopped`."""
        if not self.active:
            return
        self.active = False
        self.result.status, self.result.reason = status, reason
        self.result.seconds = time.perf_counter() - self.started
        for reporter in self.reporters:
            try:
                reporter.on_end(self.result)
            except Exception:  # noqa: BLE001 - the trial has ended; a listener's failure cannot change that
                logger.exception("sweeper: a reporter failed in on_end; the trial's result stands")


class Engine(Protocol):
    """What a run trains and how: the loop asks, the engine does the work on the device."""

    members: list[Member]
    schedule: TrialSchedule  # the phases and their epochs, common to every member
    sync_every: int  # steps between two reads of the losses (a read waits for the device)

    @property
    def rows(self) -> list[int]:
        """The member of each row of the losses `step` returns: the members still training."""

    def enter(self, phase: Phase) -> None:
        """Freeze or unfreeze the layer groups (and reset the momenta) for `phase`."""

    def batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The model(s) in training mode, and one epoch's training batches."""

    def step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every member still training; their losses, on the device."""

    def evaluate(self) -> list[dict[str, float]]:
        """The validation metrics and loss of every member still training, by row."""

    def drop_stopped(self) -> None:
        """Take the members that stopped out of the stack."""

    def finish(self, row: int) -> None:
        """Just before the member of `row` finishes (its reporters then hear on_end)."""


def run_loop(engine: Engine) -> list[TrialResult]:
    """Train every member of `engine` phase by phase; each member's result says how it ended."""
    try:
        _train(engine)
    except KeyboardInterrupt:
        for member in engine.members:
            member.stop("failed", "interrupted (KeyboardInterrupt)")
        raise
    except Exception as error:  # the shared work failed: every member still training fails, with its reason
        for member in engine.members:
            member.stop("failed", f"{type(error).__name__}: {error}")
    return [member.result for member in engine.members]


def _train(engine: Engine) -> None:
    members = engine.members
    unread: list[tuple[torch.Tensor, list[int], tuple[int, int, str]]] = []  # (losses, their members, step fields)

    # --- start: reporters hear of it; hooks see the trial, and may resume it from a checkpoint ---
    for member in members:
        _start(member)
    engine.drop_stopped()
    if not engine.rows:
        return
    # members train in lock step: a resumed trial goes on after the steps and epochs it restored
    step, epoch = len(members[0].result.steps), len(members[0].result.epochs)
    passed = 0
    for phase in engine.schedule.phases:
        engine.enter(phase)
        for _ in range(phase.epochs):
            passed += 1
            if passed <= epoch:
                continue  # trained before the checkpoint this trial resumed from

            # --- train one epoch; the losses are read every sync_every steps ---
            epoch_start = step
            for x, y in engine.batches():
                for index in engine.rows:
                    result = members[index].result
                    if result.first_step_seconds is None:
                        result.first_step_seconds = time.perf_counter() - members[index].started
                losses = engine.step(step, x, y)
                unread.append((losses, list(engine.rows), (step, epoch, phase.name)))
                step += 1
                if len(unread) >= engine.sync_every:
                    _report_steps(engine, unread)
                    if not engine.rows:
                        return
            _report_steps(engine, unread)
            if not engine.rows:
                return

            # --- evaluate on the validation set; each member's reporters hear of its epoch ---
            for index, metrics in zip(list(engine.rows), engine.evaluate()):
                member = members[index]
                losses_now = [s.loss for s in member.result.steps[epoch_start:]]
                objective = metrics[member.result.objective_name]
                event = EpochEvent(epoch, step, sum(losses_now) / len(losses_now), metrics["loss"], metrics, objective)
                member.result.epochs.append(event)
                member.result.objective = objective
                member.follow_objective()
                # any reporter may stop the member; else its hooks may checkpoint the epoch
                if member.tell(lambda reporter, event=event: reporter.on_epoch(event)):
                    member.stop("pruned", f"stopped by a reporter after epoch {epoch}")
                member.tell(lambda hook, member=member: hook.after_epoch(member.result), member.hooks)
            epoch += 1
            engine.drop_stopped()
            if not engine.rows:
                return

    # --- the end: every member still training finished ---
    for row, index in enumerate(engine.rows):
        engine.finish(row)
        members[index].stop("finished", None)


def _start(member: Member) -> None:
    """Its reporters hear `on_start`; its hooks get its trial, and the first that holds an earlier
    attempt's state restores it, which is then replayed."""
    member.tell(lambda reporter: reporter.on_start(member.start))
    if member.trial is None:
        return
    member.tell(lambda hook: hook.on_trial(member.trial), member.hooks)
    if member.active and any(hook.restore(member.result) for hook in member.hooks):
        _replay(member)
        member.follow_objective()  # the restored epochs' objectives: a plateau's state is theirs


def _replay(member: Member) -> None:
    """Report a restored trial's steps and epochs again, epoch by epoch, as they were reported
    the first time: the steps, then the epoch, where a reporter may stop it (pruned, with nothing
    after that epoch, as an uninterrupted run would have stopped)."""
    result = member.result
    steps = iter(result.steps)
    for index, epoch in enumerate(result.epochs):
        for step in steps:
            member.tell(lambda reporter, step=step: reporter.on_step(step))
            if step.step == epoch.step - 1:
                break
        stops = member.tell(lambda reporter, epoch=epoch: reporter.on_epoch(epoch))
        if not member.active:
            return
        if stops:
            del result.epochs[index + 1 :], result.steps[epoch.step :]
            result.objective = epoch.objective
            member.stop("pruned", f"stopped by a reporter after epoch {epoch.epoch}")
            return
    if result.epochs:
        result.objective = result.epochs[-1].objective


def _report_steps(engine: Engine, unread: list[tuple[torch.Tensor, list[int], tuple[int, int, str]]]) -> None:
    """Read the unread losses (one wait for the device) and report each member's steps in order;
    a member whose loss is not finite diverged at that step: the steps after it are dropped."""
    if not unread:
        return
    # the stack changes only here and after an epoch, when nothing is unread: one set of rows
    values = torch.stack([losses for losses, _, _ in unread]).reshape(len(unread), -1).tolist()
    for row_values, (_, rows, (step, epoch, phase)) in zip(values, unread):
        for value, index in zip(row_values, rows):
            member = engine.members[index]
            if not member.active:
                continue
            if not math.isfinite(value):
                member.result.diverged_step = step
                member.stop("diverged", f"loss became {value} at step {step} (epoch {epoch})")
                continue
            lrs, momentum = member.schedule.at(step)
            event = StepEvent(step, epoch, phase, tuple(lrs), momentum, value)
            member.result.steps.append(event)
            member.tell(lambda reporter, event=event: reporter.on_step(event))
    unread.clear()
    engine.drop_stopped()
