"""A study's trials counted by state, and what a worker does next given the counts: `sweep.n_trials`
counts finished (complete + pruned) trials, whoever ran them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.sweep.optuna_quiet import experimental_features_on_purpose


@dataclass(frozen=True)
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial]) -> Counts:
        states = [t.state for t in trials]
        return cls(
            complete=states.count(TrialState.COMPLETE),
            pruned=states.count(TrialState.PRUNED),
            failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING),
            waiting=states.count(TrialState.WAITING),
        )


def count_trials(study: optuna.Study) -> Counts:
    return Counts.of(study.get_trials(deepcopy=False))


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and queue again) the trials of workers whose heartbeat stopped; RDB storages only."""
    with experimental_features_on_purpose():
        optuna.storages.fail_stale_trials(study)


class Move(Enum):
    """What a worker does next, under the sweep's claim lock."""

    RUN = "run"  # start one trial
    FUSE = "fuse"  # claim up to sweep.fuse trials, trained together as one fused model
    WAIT = "wait"  # for the running trials: one may fail and need redoing
    STOP = "stop"


def next_move(counts: Counts, n_trials: int, out_of_time: bool, failed_too_often: bool = False, fuse: int = 1) -> Move:
    """Start trials while the finished and running ones leave room for them, wait while the
    running ones could still fail, stop once n_trials are finished (or out of time, or failing)."""
    if counts.finished >= n_trials or out_of_time or failed_too_often:
        return Move.STOP
    if counts.finished + counts.running < n_trials:
        return Move.FUSE if fuse > 1 else Move.RUN
    return Move.WAIT
