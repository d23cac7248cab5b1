"""A console reporter for a single trial: one line per epoch, one at the end."""

from __future__ import annotations

import sys
from typing import TextIO

from sweeper.events import EpochEvent, Reporter, StartEvent, TrialResult

__all__ = ["EpochPrinter"]


class EpochPrinter(Reporter):
    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.total_epochs = 0

    def on_start(self, event: StartEvent) -> None:
        train = event.config["train"]
        self.total_epochs = train["epochs"] + train.get("freeze_epochs", 0)
        peaks = ", ".join(f"{p:.3g}" for p in event.peaks)
        print(f"training on {event.device}: {event.n_groups} layer groups, peaks [{peaks}], "
              f"{event.total_steps} steps", file=self.stream)

    def on_epoch(self, event: EpochEvent) -> None:
        metrics = "  ".join(f"{name} {value:.4f}" for name, value in event.metrics.items())
        print(f"epoch {event.epoch + 1}/{self.total_epochs}  train_loss {event.train_loss:.4f}  "
              f"valid {metrics}", file=self.stream, flush=True)

    def on_end(self, result: TrialResult) -> None:
        objective = "-" if result.objective is None else f"{result.objective:.4f}"
        reason = f" ({result.reason})" if result.reason else ""
        print(f"{result.status}{reason}: {result.objective_name} {objective} in {result.seconds:.1f}s",
              file=self.stream, flush=True)
