"""`sweeper schedule`: what a slice and a cycle shape mean, step by step, before any training.

    sweeper schedule --lr "slice(1e-5,1e-3)" --groups 3 --steps 100 shape=torch_one_cycle
    sweeper schedule experiment=digits_transfer          # fine_tune: frozen, then unfrozen

prints the lr of every layer group and the momentum at every step (a table, or JSON with --json)
and writes a plot to results/: the trial's schedule (`sweeper.trial.schedule`), the very values the trainer
sets, over both phases of a fine-tune config. The lr defaults to the config's `lr` node, which an
override sets the same way on every command (`lr='slice(1e-5,1e-3)'`), and the groups to its
model's; the shape and its settings come from Hydra overrides (`shape=...`, `shape.pct_start=...`),
like the optimizer (an SGD without momentum keeps its momentum at 0).

A shape that follows the validation objective (torch_plateau) cannot be known before training:
it is shown for an objective that never improves after the first epoch, and the table, the
plot and the JSON (`follows_objective`) say so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError, build_shape, compose_config
from sweeper.schedules.shapes import follows_objective, shape_document
from sweeper.schedules.slices import parse_lr
from sweeper.trial.schedule import TrialSchedule, schedule_of, whole_epoch_steps

DEFAULT_STEPS = 100
MAX_NAME = 120  # characters of a plot's name drawn from the command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lr", help='a float, "slice(hi)", "slice(lo,hi)" or "[a,b,c]" (default: the config\'s lr, which lr=... sets alike)'
    )
    parser.add_argument("--groups", type=int, help="number of layer groups (default: the config's model's)")
    parser.add_argument(
        "--steps",
        type=int,
        help=f"training batches over all epochs of all phases (default {DEFAULT_STEPS}, or the nearest "
        f"multiple of the epochs of a fine-tune config)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--every", type=int, default=1, help="print every N-th step (the last step always)")
    parser.add_argument(
        "--plot", type=Path, help="plot path (default results/schedule-<the options given>.png, e.g. schedule-lr-slice-1e-3.png)"
    )
    parser.add_argument("--no-plot", action="store_true", help="write no plot")


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides, args.config_dir)
    # Everything is validated before anything is written.
    if args.groups is not None and args.groups < 1:
        raise ConfigError(f"--groups: {args.groups} must be at least 1 layer group.")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be at least 1 training batch.")
    if args.every < 1:
        raise ConfigError(f"--every: {args.every} must be at least 1.")
    steps = whole_epoch_steps(cfg, DEFAULT_STEPS) if args.steps is None else args.steps
    if whole_epoch_steps(cfg, steps) != steps:
        freeze_epochs, epochs = cfg.train.get("freeze_epochs", 0), cfg.train.epochs
        raise ConfigError(
            f"--steps: {steps} training batches do not split into the {freeze_epochs + epochs} epochs "
            f"of train.freeze_epochs={freeze_epochs} + train.epochs={epochs}; give a multiple of "
            f"{freeze_epochs + epochs}, e.g. --steps {whole_epoch_steps(cfg, steps)}."
        )
    spec = parse_lr(args.lr if args.lr is not None else OmegaConf.to_container(cfg.lr, resolve=True))
    shape = build_shape(cfg.shape)
    schedule = schedule_of(cfg, steps=steps, n_groups=args.groups, lr=spec)

    followed = _followed_objective(cfg, schedule)
    rows = schedule.rows()
    shown = [r for r in rows if r["step"] % args.every == 0 or r["step"] == steps - 1]
    plot = None
    if not args.no_plot:
        from sweeper.schedules.plots import plot_schedule  # matplotlib (~1 s) loads only for a plot

        plot = args.plot or Path(cfg.results_dir) / plot_name(args, shape.name)
        title = f"lr={spec.describe()}, {shape.name}" + _phases_note(schedule)
        plot_schedule(schedule, plot, title=title + (f", if {followed['name']} never improves after epoch 0" if followed else ""))
    if args.json:
        document = {
            "lr": spec.describe(),
            "strategy": spec.strategy,
            "peaks": list(schedule.peaks),
            "shape": shape_document(shape),
            "steps": steps,
            "phases": [
                {
                    "name": phase.name,
                    "epochs": phase.epochs,
                    "steps": phase.schedule.total,
                    "peaks": list(phase.schedule.peaks),
                    "trainable": list(phase.trainable),
                    "shape": shape_document(phase.schedule.shape),
                }
                for phase in schedule.phases
            ],
            "follows_objective": followed,
            "rows": shown,
            "plot": str(plot) if plot else None,
        }
        json.dump(document, sys.stdout, indent=1)
        print()
        return 0
    _print_table(spec.describe(), schedule, shown, followed)
    if plot:
        print(f"plot: {plot}")
    return 0


def plot_name(args: argparse.Namespace, shape_name: str) -> str:
    """The plot's file name, from the options that decide what it shows (not --json, --every):
    two commands that differ write two files. `--lr "slice(1e-5,1e-3)" --groups 3` ->
    schedule-lr-slice-1e-5-1e-3_groups-3.png; no option: schedule-<shape>.png."""
    given = [f"lr={args.lr}"] if args.lr is not None else []
    given += [f"{name}={value}" for name, value in (("groups", args.groups), ("steps", args.steps)) if value is not None]
    given += [o for o in args.overrides if not o.startswith("results_dir=")]  # where, not what
    if not given:
        return f"schedule-{shape_name}.png"
    # Only characters a shell and every file system take; a long command line keeps its start and a hash.
    slug = "_".join(re.sub(r"[^A-Za-z0-9._+-]+", "-", word).strip("-") for word in given)
    if len(slug) > MAX_NAME:
        slug = f"{slug[: MAX_NAME - 9]}-{hashlib.sha1(slug.encode()).hexdigest()[:8]}"
    return f"schedule-{slug}.png"


NEVER_IMPROVES = "an objective that never improves after the first epoch (the first sets the best; no later one beats it)"


def _followed_objective(cfg: DictConfig, schedule: TrialSchedule) -> dict | None:
    """For a schedule whose lrs follow the validation objective (torch_plateau): which objective, in
    which mode, and what the preview assumes of it; None for any other schedule."""
    if not schedule.follows_objective:
        return None
    mode = next(p.schedule.shape.mode for p in schedule.phases if follows_objective(p.schedule.shape))
    return {"name": cfg.train.objective, "mode": mode, "shown_for": NEVER_IMPROVES}


def _phases_note(schedule: TrialSchedule) -> str:
    """ "": one phase; else ": frozen 10 steps + unfrozen 90 steps"."""
    if len(schedule.phases) == 1 and schedule.phases[0].name == "train":
        return ""
    return ": " + " + ".join(f"{p.name} {p.schedule.total} steps" for p in schedule.phases)


def _print_table(lr_text: str, schedule: TrialSchedule, rows: list[dict], followed: dict | None) -> None:
    from rich.console import Console
    from rich.table import Table

    n_groups = len(schedule.peaks)
    peaks = ", ".join(f"{p:.4g}" for p in schedule.peaks)
    phased = bool(_phases_note(schedule))
    table = Table(
        title=f"lr={lr_text} -> peaks [{peaks}], {schedule.total} steps" + _phases_note(schedule),
        caption="\n".join(
            [f"{p.name}: {p.schedule.shape}" if phased else str(p.schedule.shape) for p in schedule.phases]
            + ([f"lrs follow {followed['name']} (mode {followed['mode']}), shown for {followed['shown_for']}"] if followed else [])
        ),
    )
    table.add_column("step", justify="right")
    if phased:
        table.add_column("phase")
    for group in range(n_groups):
        table.add_column(f"lr group {group}" + (" (head)" if group == n_groups - 1 else ""), justify="right")
    table.add_column("momentum", justify="right")
    for row in rows:
        momentum = row["momentum"]
        table.add_row(
            str(row["step"]),
            *([row["phase"]] if phased else []),
            *(f"{row[f'lr_{g}']:.6g}" for g in range(n_groups)),
            "-" if momentum is None else f"{momentum:.6g}",
        )
    Console(width=max(100, 16 * (n_groups + 3))).print(table)
