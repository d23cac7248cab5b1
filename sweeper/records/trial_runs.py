"""A sweep's trial runs read back from MLflow: which run each trial has, and their curves, for
the report and the verdict.

    sources = report_sources(tracking)   # None when MLflow is off or cannot be read
    write_report(study, folder, sources)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweeper.records.mlflow_store import mlflow_calls, mlflow_client, one_line, read_curves, search_all
from sweeper.records.run_record import TRIAL_KIND, runs_filter

if TYPE_CHECKING:
    from sweeper.records.tracking import SweepTracking

__all__ = ["MlflowSources", "report_sources", "trial_runs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MlflowSources:
    """Where the report finds the trials' MLflow runs: trial number -> run id, and a reader of
    one metric's history of a run, [(step, value)]."""

    run_ids: Mapping[int, str]
    read_curve: Callable[[str, str], list[tuple[int, float]]]
    ended: frozenset[int] = frozenset()  # trials whose run has ended: its curves are whole


def trial_runs(tracking: SweepTracking) -> dict[int, Any]:
    """Trial number -> MLflow run of the sweep's trials (a retried number: its newest run)."""
    if tracking.settings is None:
        return {}
    with mlflow_calls(tracking.settings):
        client = mlflow_client(tracking.settings.uri)
        experiment_id, _ = tracking.locate(client)
        runs = search_all(client, experiment_id, runs_filter(tracking.sweep, TRIAL_KIND))
    ordered = sorted(runs, key=lambda run: run.info.start_time)
    return {int(run.data.tags["trial"]): run for run in ordered if run.data.tags.get("trial", "").isdigit()}


def report_sources(tracking: SweepTracking) -> MlflowSources | None:
    """The trials' runs and a reader of their curves, for the report; None when MLflow is off or
    cannot be read (the report then stands on the study alone, and says so)."""
    if tracking.settings is None:
        return None
    try:
        runs = trial_runs(tracking)
    except Exception as error:  # noqa: BLE001 - the report still stands on the study alone
        logger.warning("sweeper report: MLflow runs could not be read (%s); the report uses the study alone.", one_line(error))
        return None
    settings = tracking.settings
    return MlflowSources(
        {number: run.info.run_id for number, run in runs.items()},
        lambda run_id, key: read_curves(settings, run_id, [key])[key],
        frozenset(number for number, run in runs.items() if run.info.status != "RUNNING"),
    )
