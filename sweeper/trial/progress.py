"""Progress of one trial on the console: a line at the start, a bar over the steps (on a
terminal), a line per epoch and a summary at the end. Per step it only advances a counter."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent, TrialResult

__all__ = ["TrialProgress", "summary_lines"]


class TrialProgress(Reporter):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.start: StartEvent | None = None
        self.total_epochs = 0
        self.bar: Progress | None = None
        self.task = None

    def on_start(self, event: StartEvent) -> None:
        self.start = event
        train = event.config["train"]
        self.total_epochs = train["epochs"] + train.get("freeze_epochs", 0)
        self._say(f"training on {event.device}: {event.n_groups} layer groups, peaks {_peaks(event.peaks)}, {event.total_steps} steps")
        if self.console.is_terminal:  # a bar only where it can redraw itself; logs get the lines
            self.bar = Progress(
                TextColumn("steps"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.task = self.bar.add_task("train", total=event.total_steps)
            self.bar.start()

    def on_step(self, event: StepEvent) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def on_epoch(self, event: EpochEvent) -> None:
        metrics = "  ".join(f"{name} {value:.4f}" for name, value in event.metrics.items() if name != "loss")
        self._say(
            f"epoch {event.epoch + 1}/{self.total_epochs}  train_loss {event.train_loss:.4f}  valid_loss {event.valid_loss:.4f}  {metrics}"
        )

    def on_end(self, result: TrialResult) -> None:
        if self.bar is not None:
            self.bar.stop()
        for line in summary_lines(result, self.start):
            self._say(line)

    def _say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def summary_lines(result: TrialResult, start: StartEvent | None = None) -> list[str]:
    """Status, objective, time and device, and the peaks, in a few lines."""
    objective = "-" if result.objective is None else f"{result.objective:.4f}"
    first = "" if result.first_step_seconds is None else f" (first step after {result.first_step_seconds:.2f}s)"
    lines = [
        f"{result.status}: {result.objective_name} {objective} after {len(result.epochs)} epochs, "
        f"{len(result.steps)} steps, {result.seconds:.2f}s{first} on {result.device}"
    ]
    if result.reason:
        lines.append(f"  reason: {result.reason}")
    if start is not None:
        lines.append(f"  peak lr per layer group (head last): {_peaks(start.peaks)}")
    return lines


def _peaks(peaks: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{p:.3g}" for p in peaks) + "]"
