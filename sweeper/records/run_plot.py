"""The plot a run's recorder attaches: `schedule.png`, the lr of every layer group and the
momentum as the trial ran them (its reported steps)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sweeper.trial.events import StepEvent, TrialResult

__all__ = ["RecordedSchedule", "schedule_png_as_run"]


@dataclass(frozen=True)
class RecordedSchedule:
    """The lr of every group and the momentum a run used, in the shape plot_schedule draws."""

    steps: Sequence[StepEvent]

    @property
    def peaks(self) -> tuple[float, ...]:
        return tuple(max(step.lrs[g] for step in self.steps) for g in range(len(self.steps[0].lrs)))

    @property
    def total(self) -> int:
        return len(self.steps)

    def rows(self) -> list[dict[str, float | int | None]]:
        return [{"step": s.step, **{f"lr_{g}": lr for g, lr in enumerate(s.lrs)}, "momentum": s.momentum} for s in self.steps]


def schedule_png_as_run(result: TrialResult) -> bytes:
    """A run's schedule.png: what its trial reported, not what its config planned."""
    from sweeper.schedules.plots import schedule_png

    return schedule_png(RecordedSchedule(result.steps), title="lr of every layer group, as run")
