"""The real trainer paced by the test's gates (`sweep.trainer=helpers.gated_trainer.GatedTrainer`).

A module of its own that imports sweeper.training.trainer (and torch) at its top, as the default
trainer's module does: a sweep's warm server loads the trainer's module before it forks the
workers (sweeper.sweep.warm), so each worker starts with torch loaded instead of importing it
itself (test_faults' eight-worker test and test_checkpoints' killed-worker test took 79-89 s of
the machine's CPU that way, 54-59 s this way, side by side)."""

from __future__ import annotations

from collections.abc import Sequence

from helpers.gates import Gates
from sweeper.training import trainer
from sweeper.trial.events import Reporter, TrialResult


class GatedTrainer:
    """sweeper.training.trainer itself, each trial starting when the TRIAL_* gates (Gates) let it: real
    training, paced by the test. Workers load it by name (sweep.trainer=helpers.gated_trainer.GatedTrainer)."""

    available_metrics = staticmethod(trainer.available_metrics)
    prepare = staticmethod(trainer.prepare)
    resolve_device = staticmethod(trainer.resolve_device)

    @staticmethod
    def train(cfg, reporters=()) -> TrialResult:
        gates = Gates.from_env()
        if not gates:
            return trainer.train(cfg, reporters)
        ticket = gates.enter()
        reporters = list(reporters)
        return trainer.train(cfg, [*reporters, _HoldInSecondEpoch(gates, ticket, reporters)])


class _HoldInSecondEpoch(Reporter):
    """GatedTrainer's TRIAL_HOLD_AFTER: holds at the first step of the second epoch it hears of."""

    def __init__(self, gates: Gates, ticket: int, reporters: Sequence) -> None:
        self.gates, self.ticket, self.reporters, self.held = gates, ticket, reporters, False

    def on_step(self, event) -> None:
        if event.epoch >= 1 and not self.held:
            self.held = True
            self.gates.hold(self.ticket, self.reporters)
