"""`sweeper confirm`: is the best slice strategy's lead real, or noise?

    sweeper confirm --seeds 5                          # the config's sweep (sweep.name)
    sweeper confirm mlp-digits --seeds 5               # a sweep by name
    sweeper confirm --seeds 8 --strategy fastai --strategy geometric experiment=digits_transfer
    sweeper confirm mlp-digits --ablate slice --seeds 5   # all else equal: each strategy on the best trial

Trains each strategy's best trial again with fresh seeds, here, one run after another (run k of
n with the time left as each ends), and prints the mean and spread per strategy with a t-test of
the leader against each other one. Writes confirm.md, confirm.csv, confirm_summary.csv and
confirm.png (the leader minus each other, seed by seed) into results/sweeps/<name>/ and records
every run in MLflow under the sweep's run. `--ablate slice` (or `shape`) instead trains the best
trial with each strategy (or shape), all else equal, paired by seed (sweeper.analysis.ablation).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from sweeper.analysis.repeats import FACTORS, seed_count
from sweeper.analysis.which_sweep import load_sweep_study, split_sweep_name
from sweeper.boundary.recorded_config import Allowed, allowed_code
from sweeper.boundary.recorded_study import study_config_dirs, study_trainer
from sweeper.config import compose_config
from sweeper.records.tracking import open_sweep, sweep_folder
from sweeper.sweep.trainer import load_trainer

if TYPE_CHECKING:
    import optuna

    from sweeper.records.tracking import SweepTracking


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="fresh seeds per strategy (default 5)")
    parser.add_argument("--strategy", action="append", help="confirm only this strategy (repeatable; default all)")
    parser.add_argument(
        "--allow-module", action="append", default=[], metavar="MODULE",
        help="also build code in MODULE, a module of yours (repeatable; as sweeper rerun)",
    )  # fmt: skip
    parser.add_argument(
        "--ablate",
        choices=sorted(FACTORS),
        help="all else equal: the best trial with each slice strategy (or each shape), paired by seed",
    )


def recorded_sweep(args: argparse.Namespace) -> tuple[DictConfig, optuna.Study, SweepTracking, Allowed, Any]:
    """(config, study, its MLflow records, the code allowed, its trainer) of the sweep named on the
    command line. What the sweep's trials ran, not today's config: its trainer and its config
    directories. A study may be shared: the code it names is checked as a rerun checks a recorded
    config. What needs no trial is checked before MLflow and the trainer load (seconds)."""
    seed_count(args.seeds)
    name, overrides = split_sweep_name(args.overrides)
    cfg = compose_config(overrides, args.config_dir)
    study = load_sweep_study(cfg, name)
    allowed = allowed_code(cfg, args.allow_module)
    trainer_name = study_trainer(study.user_attrs, allowed)  # checked before MLflow and the trainer load
    tracking = open_sweep(cfg, study)
    trainer = load_trainer(OmegaConf.create({"sweep": {"trainer": trainer_name}}))
    return cfg, study, tracking, allowed, trainer


def run(args: argparse.Namespace) -> int:
    cfg, study, tracking, allowed, trainer = recorded_sweep(args)
    from sweeper.analysis.ablation import ablate  # pandas and the rest: once nothing is refused
    from sweeper.analysis.confirm import confirm_strategies

    if args.ablate:
        ablation = ablate(
            study,
            trainer.train,
            factor=args.ablate,
            seeds=args.seeds,
            folder=sweep_folder(cfg, study.study_name),
            tracking=tracking,
            config_dirs=study_config_dirs(study.user_attrs, args.config_dir),
            allowed=allowed,
        )
        tracking.attach_files(ablation.files, "ablation")
        print(ablation.verdict)
        print(f"ablation: {ablation.files[0]}")
        return 0
    confirmation = confirm_strategies(
        study,
        trainer.train,
        seeds=args.seeds,
        folder=sweep_folder(cfg, study.study_name),
        tracking=tracking,
        config_dirs=study_config_dirs(study.user_attrs, args.config_dir),
        strategies=args.strategy,
        allowed=allowed,
    )
    tracking.attach_files(confirmation.files, "confirm")
    print(confirmation.verdict)
    print(f"confirmation: {confirmation.files[0]}")
    return 0
