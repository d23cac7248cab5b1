"""`sweeper rerun`: train a recorded trial again, exactly, and show how far its curves moved.

    sweeper rerun 3f2a9c...                     # an MLflow run id (from the UI), in tracking.uri's store
    sweeper rerun results/train/20260101-120000 # a folder with config.yaml (and result.json)
    sweeper rerun results/train/20260101-120000 --dry-run   # what it would import; runs nothing
    sweeper rerun 3f2a9c... --allow-module mypkg tracking=server

A recorded config is untrusted (run stores are shared; see sweeper.boundary.recorded_config). The rerun first
resolves it without resolvers (no ${oc.env:...}: nothing of this machine's environment gets into
the records) and lists every piece of code it would import; it refuses any name outside
sweeper's allow-list of callables and the modules of yours you allow (--allow-module, or
tracking.allow_modules in your own config), with exit code 2 and nothing written. Then it trains
the checked config with the recorded seed, records a new run tagged sweeper.rerun_of, writes it
to results/reruns/<time>/ and prints the largest absolute difference between the two runs' step
and epoch curves: 0 on CPU with train.deterministic on.
Overrides (key=value) set where to record and what to allow; they never change the recorded config.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sweeper.analysis.rerun import load_source, rerun
from sweeper.boundary.recorded_config import allowed_code, check_config, find_imports, resolve_recorded
from sweeper.config import compose_config

EXIT_DIFFERENT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="an MLflow run id, or a folder holding config.yaml (e.g. results/train/<time>)")
    parser.add_argument(
        "--allow-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="trust every name in MODULE, a module of your own, and whatever it imports (repeatable)",
    )
    parser.add_argument("--name", help="folder name under results/reruns/ (default: the start time)")
    parser.add_argument("--dry-run", action="store_true", help="list what the config imports and check it; run nothing")
    parser.add_argument("--strict", action="store_true", help=f"exit {EXIT_DIFFERENT} unless every curve is bitwise equal")


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides, args.config_dir)  # the user's own settings, not the recorded ones
    allowed = allowed_code(cfg, args.allow_module)
    source = load_source(args.source, cfg)
    config = resolve_recorded(source.config)
    print(f"rerun of {source.label}; the recorded config imports:")
    for found in find_imports(config):
        print(f"  {found.setting}: {found.shown}" + ("" if allowed.allows(found) else "  (not allowed)"))
    check_config(config, allowed)
    if args.dry_run:
        return 0
    folder = Path(cfg.results_dir) / "reruns" / (args.name or time.strftime("%Y%m%d-%H%M%S"))
    if source.status == "pruned" and source.epochs_reached:
        train = config.get("train") or {}
        planned = (train.get("freeze_epochs") or 0) + (train.get("epochs") or 0)
        print(
            f"the trial was pruned after epoch {source.epochs_reached} of {planned}: the rerun trains "
            f"its schedule that far and stops there too, so the two runs compare step for step"
        )
    outcome = rerun(source, cfg, folder, args.allow_module)  # checks again: it trusts no caller
    for note in outcome.comparison.notes:
        print(f"  {note}")
    print(f"{outcome.result.status}; {outcome.comparison.summary()}")
    if len(outcome.comparison.table) and not outcome.comparison.exact:
        worst = outcome.comparison.table.sort_values("max_abs_diff", ascending=False).head(5)
        print(worst.to_string(index=False))
    print(f"rerun: {folder}" + (f"; MLflow run {outcome.run_id}" if outcome.run_id else ""))
    return EXIT_DIFFERENT if args.strict and not outcome.comparison.exact else 0
