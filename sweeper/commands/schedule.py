"""`sweeper schedule`: what a slice and a cycle shape mean, step by step, before any training.

    sweeper schedule --lr "slice(1e-5,1e-3)" --groups 3 --steps 100 shape=torch_one_cycle

prints the lr of every layer group and the momentum at every step (a table, or JSON with --json)
and writes a plot to results/. The lr defaults to the config's `lr` node, which an override sets
the same way on every command (`lr='slice(1e-5,1e-3)'`); the shape and its settings come from
Hydra overrides (`shape=...`, `shape.pct_start=...`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from omegaconf import OmegaConf

from sweeper.config import ConfigError, build_shape, compose_config
from sweeper.plots import plot_schedule
from sweeper.shapes import Schedule
from sweeper.slices import parse_lr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lr", help='a float, "slice(hi)", "slice(lo,hi)" or "[a,b,c]" (default: the config\'s lr, which lr=... sets alike)'
    )
    parser.add_argument("--groups", type=int, default=3, help="number of layer groups (default 3)")
    parser.add_argument("--steps", type=int, default=100, help="training batches over all epochs (default 100)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--every", type=int, default=1, help="print every N-th step (the last step always)")
    parser.add_argument("--plot", type=Path, help="plot path (default results/schedule-<shape>.png)")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides, args.config_dir)
    # Everything is validated before anything is written.
    if args.groups < 1:
        raise ConfigError(f"--groups: {args.groups} must be at least 1 layer group.")
    if args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be at least 1 training batch.")
    if args.every < 1:
        raise ConfigError(f"--every: {args.every} must be at least 1.")
    spec = parse_lr(args.lr if args.lr is not None else OmegaConf.to_container(cfg.lr, resolve=True))
    shape = build_shape(cfg.shape)
    schedule = Schedule(tuple(spec.peaks(args.groups)), shape, args.steps)

    rows = schedule.rows()
    shown = [r for r in rows if r["step"] % args.every == 0 or r["step"] == args.steps - 1]
    plot = None
    if not args.no_plot:
        plot = args.plot or Path(cfg.results_dir) / f"schedule-{shape.name}.png"
        plot_schedule(schedule, plot, title=f"lr={spec.describe()}, {shape.name}")
    if args.json:
        document = {
            "lr": spec.describe(),
            "strategy": spec.strategy,
            "peaks": list(schedule.peaks),
            "shape": {"name": shape.name, **asdict(shape)},
            "steps": args.steps,
            "rows": shown,
            "plot": str(plot) if plot else None,
        }
        json.dump(document, sys.stdout, indent=1)
        print()
        return 0
    _print_table(spec.describe(), schedule, shown)
    if plot:
        print(f"plot: {plot}")
    return 0


def _print_table(lr_text: str, schedule: Schedule, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    n_groups = len(schedule.peaks)
    peaks = ", ".join(f"{p:.4g}" for p in schedule.peaks)
    table = Table(
        title=f"lr={lr_text} -> peaks [{peaks}], {schedule.total} steps", caption=str(schedule.shape)
    )
    table.add_column("step", justify="right")
    for group in range(n_groups):
        table.add_column(f"lr group {group}" + (" (head)" if group == n_groups - 1 else ""), justify="right")
    table.add_column("momentum", justify="right")
    for row in rows:
        momentum = row["momentum"]
        table.add_row(
            str(row["step"]),
            *(f"{row[f'lr_{g}']:.6g}" for g in range(n_groups)),
            "-" if momentum is None else f"{momentum:.6g}",
        )
    Console(width=max(100, 16 * (n_groups + 2))).print(table)
