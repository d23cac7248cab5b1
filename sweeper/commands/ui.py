"""`sweeper ui`: the MLflow UI on a sweep's comparison, one click away.

    sweeper ui                       # the config's sweep (sweep.name), from the folder it ran in
    sweeper ui mlp-digits-shapes     # a sweep by name
    sweeper ui mlp-digits --port 5001

Starts the MLflow UI on 127.0.0.1 over the store the sweep recorded to (an embedded store; for a
tracking server it only prints the link) and prints a link that opens the sweep's trials,
grouped by the compared setting (slice strategy, or shape) and by how they ended, in the chart
view: each curve's mean and spread per strategy over its complete trials, the objective's chart
first; and a link to the sweep's own run (its report, the verdict).
Ctrl-C stops it.
"""

from __future__ import annotations

import argparse

from sweeper.analysis.ui import MlflowUiServer, browsable_base, run_link, sampled_settings, share_view, sweep_link
from sweeper.analysis.which_sweep import load_sweep_study, split_sweep_name
from sweeper.boundary.recorded_sweep import recorded_compare
from sweeper.config import ConfigError, compose_config
from sweeper.records.tracking import open_sweep, sweep_folder

DEFAULT_PORT = 5000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (parser.description or "") + " Positional: [SWEEP_NAME] [overrides]."
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a port; give one in 1-65535, e.g. --port {DEFAULT_PORT}.")
    name, overrides = split_sweep_name(args.overrides)
    cfg = compose_config(overrides, args.config_dir)
    study = load_sweep_study(cfg, name)
    tracking = open_sweep(cfg, study)
    if tracking.settings is None:
        raise ConfigError(
            f"tracking: sweep {study.study_name!r} ran with tracking off, so MLflow has no runs of it; "
            f"its report is in {sweep_folder(cfg, study.study_name)}/ (sweeper report {study.study_name})."
        )
    from sweeper.analysis.report import objective_columns  # pandas and matplotlib: once the sweep is found

    (objective, direction), *_ = objective_columns(study)
    compared = recorded_compare(study.user_attrs).get("param") or "strategy"
    key = share_view(tracking, objective, direction, compared, sampled_settings(study))
    if tracking.settings.is_server:
        _links(study.study_name, browsable_base(tracking.settings.uri), tracking, key, compared)
        return 0
    log = sweep_folder(cfg, study.study_name) / "ui.log"
    with MlflowUiServer(tracking.settings.uri, args.port, log) as server:
        _links(study.study_name, server.url, tracking, key, compared)
        print("the MLflow UI runs on 127.0.0.1 until Ctrl-C", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
    return 0


def _links(name: str, base: str, tracking, key: str, compared: str) -> None:
    print(f"sweep {name} in MLflow: {sweep_link(base, tracking.experiment_id, key)}", flush=True)
    print(
        f"  (complete trials grouped by {compared}, best first; pruned ones in groups of their own, out of the others' means; "
        f"the sweep's run is the group '{compared}: (none)')",
        flush=True,
    )
    if tracking.parent_run_id:
        print(
            f"the sweep's run (its report, and the verdict once given): {run_link(base, tracking.experiment_id, tracking.parent_run_id)}",
            flush=True,
        )
