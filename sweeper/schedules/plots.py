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


@contextmanager
def drawing() -> Iterator[None]:
    """Hold matplotlib for a figure's whole life: made, laid out, saved, closed."""
    with _DRAWING:
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
        figure.savefig(path, dpi=100)
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
    cheap: a figure outside pyplot's registry, fixed margins instead of tight_layout (which
    costs as much as drawing the whole figure), and no minor ticks on the log axis."""
    with drawing():
        return _schedule_png(schedule, title)


def _schedule_png(schedule: Schedule, title: str) -> bytes:
    rows = schedule.rows()
    steps = [row["step"] for row in rows]
    momenta = [row["momentum"] for row in rows]
    has_momentum = momenta[0] is not None
    figure = Figure(figsize=(8, 6 if has_momentum else 4))
    axes = figure.subplots(2 if has_momentum else 1, 1, sharex=True, squeeze=False)
    figure.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.1 if has_momentum else 0.13, hspace=0.1)
    lr_axis = axes[0][0]
    for group in range(len(schedule.peaks)):
        label = f"group {group}" + (" (head)" if group == len(schedule.peaks) - 1 else "")
        lr_axis.plot(steps, [row[f"lr_{group}"] for row in rows], label=label)
    log_y(lr_axis)
    lr_axis.set_ylabel("learning rate")
    lr_axis.legend(loc="best", fontsize="small")
    lr_axis.set_title(title or f"{schedule.shape.name}: {len(schedule.peaks)} groups, {schedule.total} steps")
    if has_momentum:
        axes[1][0].plot(steps, momenta, color="tab:gray")
        axes[1][0].set_ylabel("momentum / beta1")
    axes[-1][0].set_xlabel("training batch")
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    return png.getvalue()
