"""What a trial reports while it trains, and what it returns: the seam between the trainer and
everything that listens to it (MLflow recorder, Optuna pruning, progress display).

The trainer calls every reporter's `on_start`, then `on_step` after every training batch, then
`on_epoch` after every evaluation, then `on_end` once with the result. A reporter whose `on_epoch`
returns True asks the trainer to stop (the trial ends as "pruned"). Events are plain frozen
dataclasses: picklable, and free of Optuna, MLflow and torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EpochEvent", "Reporter", "StartEvent", "StepEvent", "TrainerHook", "TrialResult", "TRIAL_STATUSES"]

# finished: trained to the end; pruned: a reporter asked to stop; diverged: the loss became
# non-finite; failed: an exception ended it (the reason says which).
TRIAL_STATUSES = ("finished", "pruned", "diverged", "failed")


@dataclass(frozen=True)
class StartEvent:
    config: dict[str, Any]  # the resolved trial config, as plain containers
    peaks: tuple[float, ...]  # peak lr of each layer group
    n_groups: int
    total_steps: int  # training batches over all phases and epochs
    device: str  # e.g. "cpu", "cuda:0"


@dataclass(frozen=True)
class StepEvent:
    step: int  # global training batch index, 0-based, over all phases
    epoch: int  # global epoch index, 0-based (frozen epochs first)
    phase: str  # "frozen" or "unfrozen" in fine_tune, else "train"
    lrs: tuple[float, ...]  # lr of every layer group used for this batch
    momentum: float | None  # SGD momentum / Adam beta1 used for this batch
    loss: float  # training loss of this batch


@dataclass(frozen=True)
class EpochEvent:
    epoch: int  # global epoch index, 0-based
    step: int  # global steps done when the epoch ended
    train_loss: float  # mean training loss over the epoch
    valid_loss: float
    metrics: dict[str, float]  # every validation metric, e.g. {"accuracy": 0.97, "loss": 0.1}
    objective: float  # metrics[objective name]


@dataclass
class TrialResult:
    status: str  # one of TRIAL_STATUSES
    objective: float | None  # the last epoch's objective (None if no epoch finished)
    objective_name: str
    steps: list[StepEvent] = field(default_factory=list)
    epochs: list[EpochEvent] = field(default_factory=list)
    reason: str | None = None  # why it did not finish, e.g. "loss became nan at step 12"
    diverged_step: int | None = None
    device: str = "cpu"
    seconds: float = 0.0  # wall time of the whole trial
    first_step_seconds: float | None = None  # from the trial's start to its first training step

    def curve(self, name: str) -> list[float]:
        """A step curve ("loss", "momentum", "lr_0", ...) or an epoch curve ("valid_loss", a metric)."""
        if name == "loss":
            return [s.loss for s in self.steps]
        if name == "momentum":
            return [s.momentum for s in self.steps]
        if name.startswith("lr_"):
            return [s.lrs[int(name[3:])] for s in self.steps]
        if name == "train_loss":
            return [e.train_loss for e in self.epochs]
        if name == "valid_loss":
            return [e.valid_loss for e in self.epochs]
        return [e.metrics[name] for e in self.epochs]


class Reporter:
    """Base reporter: override what you need. Every method must be cheap (it runs per batch)."""

    def on_start(self, event: StartEvent) -> None:
        pass

    def on_step(self, event: StepEvent) -> None:
        pass

    def on_epoch(self, event: EpochEvent) -> bool | None:
        return None

    def on_end(self, result: TrialResult) -> None:
        pass

    def unwritten(self) -> str | None:
        """After `on_end`: what of the trial this reporter could not write, its disk being full
        (e.g. "its MLflow records"); None when everything was written or is kept to be sent
        later. A trial with something unwritten is failed, not told finished without it."""
        return None


class TrainerHook(Reporter):
    """A Reporter that also sees the trial's state: the trainer calls `on_trial` with the prepared
    trial (the model, the optimizer, the data: whatever the trainer prepared) once every reporter
    has heard `on_start`, then `restore` (the first hook that restores the trial from an earlier
    attempt wins), and `after_epoch` once every reporter has heard of an epoch and none asked to
    stop. A fused member's hooks get `on_trial` only as it finishes, with its own weights (see
    `sweeper.training.loop`). Checkpoints and the model keeper are hooks; the loop knows no more
    of them."""

    trial: Any = None

    def on_trial(self, trial: Any) -> None:
        self.trial = trial

    def restore(self, result: TrialResult) -> bool:
        """Put the trial back where an earlier attempt at it left off, and `result`'s steps and
        epochs to those it had reported (the trainer replays them); False when there is none."""
        return False

    def after_epoch(self, result: TrialResult) -> None:
        pass
