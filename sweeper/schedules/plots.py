"""Plots written as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, NullLocator  # noqa: E402

from sweeper.schedules.shapes import Schedule  # noqa: E402

__all__ = ["Margins", "drawing", "log_y", "plot_schedule", "save_figure", "schedule_png"]

# matplotlib draws in one thread at a time: its text layout (the mathtext parser, the shared font
# objects) and pyplot's style and figure registry are process-wide and not thread-safe, and the
# sweep's process draws in two threads (the recorder's schedule plots, the report's).
_DRAWING = threading.RLock()


# zlib's quickest level: ~5 ms less a schedule plot than its default (~60 ms), for files ~7% bigger.
_QUICK_PNG = {"compress_level": 1}

# A title stands at the top of its axes, as it does where nothing else is there. matplotlib would
# otherwise lift each above whatever decorates the top of its axes, measuring every tick label of
# the figure to find out (~4 ms of a schedule plot's ~95): no plot here decorates the top.
_FIXED_TITLES = {"axes.titley": 1.0}


@contextmanager
def drawing() -> Iterator[None]:
    """Hold matplotlib for a figure's whole life: made, laid out, saved, closed (and make its
    axes with their titles where they stand)."""
    with _DRAWING, matplotlib.rc_context(_FIXED_TITLES):
        yield


@dataclass(frozen=True)
class Margins:
    """The room around a figure's row of axes and between them, in inches. tight_layout finds it
    by laying out every text of the figure, which costs as much as drawing it (half of a report's
    plot); a plot whose labels are of known kinds (short numbers, a title, names at an angle)
    sets it instead."""

    left: float = 0.8  # y tick labels and the y label
    right: float = 0.2
    top: float = 0.4  # the title
    bottom: float = 0.6  # x tick labels and the x label
    between: float = 0.3  # between two panels of the row

    def apply(self, figure: plt.Figure) -> None:
        width, height = figure.get_size_inches()
        panels = max(1, len(figure.axes))
        panel_width = (width - self.left - self.right - self.between * (panels - 1)) / panels
        figure.subplots_adjust(
            left=self.left / width,
            right=1 - self.right / width,
            top=1 - self.top / height,
            bottom=self.bottom / height,
            wspace=self.between / panel_width,
        )


def save_figure(figure: plt.Figure, path: str | Path, margins: Margins | None = None) -> Path:
    """Write `figure` as a PNG at `path` (folders made as needed) and free it; laid out by
    tight_layout, or with `margins` (a figure of one row of axes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with drawing():
        if margins is None:
            figure.tight_layout()
        else:
            margins.apply(figure)
        figure.savefig(path, dpi=100, pil_kwargs=_QUICK_PNG)
        plt.close(figure)
    return path


def log_y(axis: plt.Axes) -> None:
    """A log-scale y axis without minor ticks (eight a decade cost more to draw than the curves)
    and with its decades labelled in plain text, 1e-03: matplotlib's 10^-3 is typeset by its
    mathtext parser, a fifth of a schedule plot's time, which every recorded trial draws."""
    axis.set_yscale("log")
    axis.yaxis.set_minor_locator(NullLocator())
    axis.yaxis.set_major_formatter(LogFormatter())


def plot_schedule(schedule: Schedule, path: str | Path, title: str = "") -> Path:
    """The lr of every layer group (log scale) and the momentum over the training batches."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(schedule_png(schedule, title))
    return path


def schedule_png(schedule: Schedule, title: str = "") -> bytes:
    """plot_schedule's PNG, as bytes. Every recorded trial draws one as it ends, so it is kept
    cheap: one figure per layout (how many groups, whether momentum moves), made once outside
    pyplot's registry and drawn again with each schedule's curves (making its axes and their
    ticks was ~27 ms of a ~95 ms drawing), fixed margins instead of tight_layout (which costs as much as drawing
    the whole figure), no minor ticks on the log axis, and a quick PNG compression."""
    rows = schedule.rows()
    steps = [row["step"] for row in rows]
    groups = [[row[f"lr_{group}"] for row in rows] for group in range(len(schedule.peaks))]
    momenta = [row["momentum"] for row in rows]
    title = title or f"{schedule.shape.name}: {len(schedule.peaks)} groups, {schedule.total} steps"
    with drawing():
        layout = (len(groups), momenta[0] is not None)
        if layout not in _SCHEDULE_FIGURES:
            _SCHEDULE_FIGURES[layout] = _ScheduleFigure(*layout)
        return _SCHEDULE_FIGURES[layout].png(steps, groups, momenta, title)


class _ScheduleFigure:
    """The schedule plot of one layout: the lr of every group (log scale) above the momentum."""

    def __init__(self, groups: int, has_momentum: bool) -> None:
        self.figure = Figure(figsize=(8, 6 if has_momentum else 4))
        axes = [row[0] for row in self.figure.subplots(2 if has_momentum else 1, 1, sharex=True, squeeze=False)]
        self.figure.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.1 if has_momentum else 0.13, hspace=0.1)
        self.lr_axis = axes[0]
        self.lr_lines = [
            self.lr_axis.plot([], [], label=f"group {group}" + (" (head)" if group == groups - 1 else ""))[0] for group in range(groups)
        ]
        log_y(self.lr_axis)
        self.lr_axis.set_ylabel("learning rate")
        self.lr_axis.legend(loc="best", fontsize="small")
        self.momentum_line = axes[1].plot([], [], color="tab:gray")[0] if has_momentum else None
        if has_momentum:
            axes[1].set_ylabel("momentum / beta1")
        axes[-1].set_xlabel("training batch")
        self.axes = axes

    def png(self, steps: list[int], groups: list[list[float]], momenta: list[float | None], title: str) -> bytes:
        for line, lrs in zip(self.lr_lines, groups):
            line.set_data(steps, lrs)
        if self.momentum_line is not None:
            self.momentum_line.set_data(steps, momenta)
        self.lr_axis.set_title(title)
        for axis in self.axes:
            axis.relim()
            axis.autoscale_view()
        png = io.BytesIO()
        self.figure.savefig(png, format="png", dpi=100, pil_kwargs=_QUICK_PNG)
        return png.getvalue()


# Every layout drawn in this process, made once (sweeper draws few: one per model and momentum).
_SCHEDULE_FIGURES: dict[tuple[int, bool], _ScheduleFigure] = {}
