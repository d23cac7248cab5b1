"""`sweeper lr-find`: fastai's learning-rate range test for a model and data.

    sweeper lr-find model=cnn data=digits
    sweeper lr-find experiment=digits_transfer      # frozen like the first fine_tune phase

Prints the suggestions (valley, minimum, steep; --suggest picks among those and slide) and writes
the loss-vs-lr plot under results/. --start-lr, --end-lr, --num-it and --no-stop-div are fastai's
lr_find arguments.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path

from sweeper.config import compose_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start-lr", type=float, default=1e-7, help="lr of the first batch (default 1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="lr the sweep heads for (default 10)")
    parser.add_argument("--num-it", type=int, default=100, help="batches in the test (default 100)")
    parser.add_argument(
        "--no-stop-div",
        dest="stop_div",
        action="store_false",
        help="run every batch even once the loss diverges (fastai's stop_div=False)",
    )
    parser.add_argument(
        "--suggest",
        default="valley,minimum,steep",
        help="suggestion functions, comma-separated, among valley, minimum, steep, slide (fastai's suggest_funcs; default valley,minimum,steep)",
    )
    parser.add_argument("--plot", type=Path, help="plot path (default results/lr_find-<model>-<data>.png)")


def run(args: argparse.Namespace) -> int:
    from sweeper.training.lr_find import lr_find, plot_lr_find  # torch loads only when the test runs

    cfg = compose_config(args.overrides, args.config_dir)
    suggestions = tuple(name.strip() for name in args.suggest.split(",") if name.strip())
    result = lr_find(cfg, args.start_lr, args.end_lr, args.num_it, stop_div=args.stop_div, suggestions=suggestions)
    print(f"lr_find over {len(result.lrs)} batches, lr {result.lrs[0]:.1e} to {result.lrs[-1]:.1e}")
    if not result.suggestions:
        print("too few batches before the loss diverged to suggest an lr; lower --start-lr or raise --num-it.")
    for name, lr in result.suggestions.items():
        print(f"  {name:8s} {lr:.3e}" + ("   (fastai's default)" if name == "valley" else ""))
    plot = args.plot or Path(cfg.results_dir) / f"lr_find-{cfg.model.name}-{cfg.data.name}.png"
    print(f"plot: {plot_lr_find(result, plot)}")
    if "valley" in result.suggestions:
        print(how_to_use(result.suggestions["valley"], args.overrides))
    return 0


def how_to_use(valley: float, overrides: Sequence[str]) -> str:
    """The commands that use a suggestion, with the user's own settings: a trial at the valley,
    and a sweep of the head's lr a decade either side of it (the sweep samples the strategy)."""
    given = "".join(f" {shlex.quote(o)}" for o in overrides)
    around = f"tag(log, interval({valley / 10:.2g}, {valley * 10:.2g}))"
    return (
        f"use it: sweeper train{given} lr={valley:.2g}\n"
        f"  or sweep a decade either side: sweeper sweep{given} search.lr.high={shlex.quote(around)}"
    )
