"""The plot a run's recorder attaches: `schedule.png`, the lr of every layer group and the
momentum as the trial ran them (its reported steps)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sweeper.trial.events import StepEvent, TrialResult

__all__ = ["RecordedSchedule", "import_plotting", "schedule_png_as_run"]


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


_IMPORTING = threading.Lock()


def import_plotting() -> None:
    """Import matplotlib (pyplot included) in one thread at a time. The sweep's process draws in
    two (the recorder's schedule plots, the report), and a module two threads import at once can
    be seen half made (pyplot's circular imports): the second waits for the first here."""
    with _IMPORTING:
        import sweeper.schedules.plots  # noqa: F401


def schedule_png_as_run(result: TrialResult) -> bytes:
    """A run's schedule.png: what its trial reported, not what its config planned."""
    import_plotting()
    from sweeper.schedules.plots import schedule_png

    return schedule_png(RecordedSchedule(result.steps), title="lr of every layer group, as run")
