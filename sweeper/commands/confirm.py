"""`sweeper confirm`: is the best slice strategy's lead real, or noise?

    sweeper confirm --seeds 5                          # the config's sweep (sweep.name)
    sweeper confirm mlp-digits --seeds 5               # a sweep by name
    sweeper confirm --seeds 8 --strategy fastai --strategy geometric experiment=digits_transfer

Trains each strategy's best trial again with fresh seeds, here, one run after another, and
prints the mean and spread per strategy with a t-test of the leader against each other one.
Writes confirm.md, confirm.csv and confirm_summary.csv into results/sweeps/<name>/ and records
every run in MLflow under the sweep's run.
"""

from __future__ import annotations

import argparse

from sweeper.config import compose_config
from sweeper.confirm import confirm_strategies
from sweeper.report import load_sweep_study, split_sweep_name
from sweeper.study import load_trainer
from sweeper.tracking import open_sweep, sweep_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="fresh seeds per strategy (default 5)")
    parser.add_argument("--strategy", action="append", help="confirm only this strategy (repeatable; default all)")


def run(args: argparse.Namespace) -> int:
    name, overrides = split_sweep_name(args.overrides)
    cfg = compose_config(overrides, args.config_dir)
    study = load_sweep_study(cfg, name)
    tracking = open_sweep(cfg, study.study_name)
    confirmation = confirm_strategies(
        study,
        load_trainer(cfg).train,
        seeds=args.seeds,
        folder=sweep_folder(cfg, study.study_name),
        tracking=tracking,
        config_dirs=args.config_dir,
        strategies=args.strategy,
    )
    folder = confirmation.folder
    tracking.attach_files([folder / "confirm.md", folder / "confirm.csv", folder / "confirm_summary.csv"], "confirm")
    print(confirmation.verdict)
    print(f"confirmation: {folder / 'confirm.md'}")
    return 0
