"""The plot of paired comparisons: each comparison's difference on every seed (a dot each), with
its mean and interval where it has one, drawn for the verdict, `sweeper confirm` and the ablation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from sweeper.analysis.paired import Paired
from sweeper.analysis.report import plt
from sweeper.schedules.plots import drawing, save_figure

__all__ = ["plot_paired"]


def plot_paired(comparisons: Sequence[Paired], objective: str, path: Path, title: str) -> Path:
    """`comparisons` (judged: sweeper.analysis.paired.with_family) drawn into `path` (PNG); those
    called real in green."""
    with drawing():  # the recorder may be drawing a run's schedule in another thread
        figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(comparisons) + 2), 4.5))
        for x, c in enumerate(comparisons):
            axis.plot([x] * c.n, c.diffs, "o", color="tab:green" if c.real else "tab:gray", alpha=0.6)
            if not math.isnan(c.low):
                axis.errorbar([x], [c.mean], yerr=[[c.mean - c.low], [c.high - c.mean]], fmt="_", color="black", capsize=6, markersize=18)
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(comparisons)), [_label(c) for c in comparisons], fontsize="small")
        axis.set(ylabel=f"{objective} difference (> 0: first better)", title=title)
        return save_figure(figure, path)


def _label(c: Paired) -> str:
    held = {"": "", "tuned": "\ntuned"}.get(c.where, f"\nat {c.where}'s")
    return f"{c.first} vs {c.second}{held}"
