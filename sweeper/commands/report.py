"""`sweeper report`: compare the slice strategies and cycle shapes of a sweep.

    sweeper report                          # the config's sweep (sweep.name), in results/
    sweeper report mlp-digits               # a sweep by name
    sweeper report mlp-digits storage=postgres tracking=server   # where the sweep lives

writes results/sweeps/<name>/ (trials.csv, by_strategy.csv, by_shape.csv, plots, report.md) from
the Optuna study, with the curves MLflow recorded, and attaches it to the sweep's MLflow run.
The sweep itself writes the same report when it ends; this brings it up to date at any time.
"""

from __future__ import annotations

import argparse

from sweeper.analysis.which_sweep import load_sweep_study, split_sweep_name
from sweeper.boundary.recorded_config import allowed_code
from sweeper.config import compose_config
from sweeper.config.errors import NotWritten, disk_full
from sweeper.records.tracking import open_sweep, sweep_folder
from sweeper.records.trial_runs import report_sources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + " Positional: [SWEEP_NAME] [overrides]."


def run(args: argparse.Namespace) -> int:
    name, overrides = split_sweep_name(args.overrides)
    cfg = compose_config(overrides, args.config_dir)
    study = load_sweep_study(cfg, name)
    from sweeper.analysis.report import write_report  # pandas and matplotlib: once the sweep is found

    tracking = open_sweep(cfg, study)
    # what the report builds to plan a schedule is checked as any record: the user's own allowed modules
    folder = sweep_folder(cfg, study.study_name)
    try:
        report = write_report(study, folder, report_sources(tracking), allowed_code(cfg))
    except OSError as error:
        if disk_full(error):  # a write error need not name its file
            raise NotWritten(f"the report in {folder}") from error
        raise
    tracking.attach_report(report)
    print(report.summary)
    print(f"report: {report.folder / 'report.md'}")
    if tracking.parent_run_id:
        print(f"MLflow run: {tracking.parent_run_id} in {tracking.settings.label} (attached under report/)")
    return 0
