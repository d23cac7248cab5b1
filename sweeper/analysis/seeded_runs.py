"""Recorded configs trained again on chosen seeds, one after another: the runs behind `sweeper
confirm`, its ablation and the verdict.

Each run is a trial's recorded overrides with `train.seed` set, read through the boundary
(sweeper.boundary.recorded_study: the checked config, built as it is), trained with a recorder
under the sweep's MLflow run (when there is one), and becomes one row of the runs table. Runs take
seconds to minutes each, so every one is shown as it ends: run k of n with an estimate of the time
left, under a rich progress bar on a terminal, a line per finished run otherwise (as a log reads).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sweeper.boundary.recorded_config import Allowed
from sweeper.boundary.recorded_study import trial_config
from sweeper.records.tracking import SweepTracking
from sweeper.trial.events import Reporter, TrialResult

__all__ = ["RunCounter", "SeededRun", "TrainFn", "run_seeds"]

TrainFn = Callable[[DictConfig, Sequence[Reporter]], TrialResult]


@dataclass(frozen=True)
class SeededRun:
    """One run to make: `overrides` (a trial's, as recorded) on `seed`, recorded in MLflow as
    `kind` named `name` with `tags`; `label` says which run it is on the console; its row holds
    `describes` before the outcome (seed, status, objective) and `carries` after it."""

    overrides: Sequence[str]
    seed: int
    kind: str
    name: str
    label: str
    tags: Mapping[str, str] = field(default_factory=dict)
    describes: Mapping[str, Any] = field(default_factory=dict)
    carries: Mapping[str, Any] = field(default_factory=dict)


class RunCounter:
    """Run k of n with an estimate of the time left, for `what` (confirm, ablation, verdict).

    A line per finished run goes to `say` when one is given; else to the console, where on a
    terminal a progress bar (the run under way, the estimate) stays under the lines."""

    def __init__(self, total: int, what: str, say: Callable[[str], None] | None = None, console: Console | None = None) -> None:
        self.total, self.what, self.done, self.start = total, what, 0, time.monotonic()
        self.console = None if say else console or Console()
        self.say = say or (lambda line: self.console.print(line, markup=False, highlight=False, soft_wrap=True))
        self.bar: Progress | None = None
        if self.console is not None and self.console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = Progress(*columns, console=self.console, transient=True)
            self.task = self.bar.add_task(what, total=total)

    def __enter__(self) -> RunCounter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def starts(self, label: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.what}: run {self.done + 1} of {self.total} {label}")

    def finished(self, label: str, value: float) -> None:
        self.done += 1
        spent = time.monotonic() - self.start
        left = spent / self.done * (self.total - self.done)
        self.say(f"{self.what}: run {self.done}/{self.total} {label}: {value:.4g} ({spent:.0f} s so far, about {left:.0f} s left)")
        if self.bar is not None:
            self.bar.advance(self.task)


def run_seeds(
    runs: Sequence[SeededRun],
    train: TrainFn,
    objective: str,
    *,
    what: str,
    tracking: SweepTracking | None = None,
    config_dirs: Sequence[str] = (),
    allowed: Allowed = Allowed(),
    say: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Train every run in order; one row each: its `describes`, seed, status, objective (NaN
    unless it finished), its `carries` and its MLflow run id ("" when not recorded)."""
    rows = []
    with RunCounter(len(runs), what, say) as progress:
        for run in runs:
            cfg = trial_config([*run.overrides, f"train.seed={run.seed}"], config_dirs, allowed)
            recorder = Reporter() if tracking is None else tracking.run_reporter(cfg, run.kind, run.name, run.tags)
            progress.starts(run.label)
            result = train(cfg, [recorder])
            score = result.objective if result.status == "finished" else math.nan
            progress.finished(run.label, score)
            rows.append(
                {
                    **run.describes,
                    "seed": run.seed,
                    "status": result.status,
                    objective: score,
                    **run.carries,
                    "mlflow_run_id": getattr(recorder, "run_id", None) or "",
                }
            )
    return pd.DataFrame(rows)
