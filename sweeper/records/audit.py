"""What a sweep's MLflow records lack at its end, found after its workers have stopped.

    audit = audit_records(tracking, study, spool)   # `sweeper sweep`, after its recorder closed
    for line in audit.lines(): print(f"records: {line}")

Runs left RUNNING by a worker that died or was stopped mid-trial are ended (KILLED), and the
finished trials MLflow holds no finished run for are named (their records were lost). Trials
whose records another command's recorder is still sending from this machine's spool folder are
not judged: that recorder ends their runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sweeper.records.mlflow_store import mlflow_calls, mlflow_client, one_line, search_all
from sweeper.records.run_record import TRIAL_KIND, runs_filter
from sweeper.records.spool import trials_in_another_recorders_hands

if TYPE_CHECKING:
    import optuna

    from sweeper.records.tracking import SweepTracking

__all__ = ["RecordsAudit", "audit_records"]


@dataclass(frozen=True)
class RecordsAudit:
    """What a sweep's records lack at its end."""

    closed: Sequence[str] = ()  # runs left RUNNING by stopped workers, now ended (KILLED)
    lost: Sequence[int] = ()  # finished trials without a finished MLflow run
    unread: str | None = None  # why the store could not be checked

    @property
    def complete(self) -> bool:
        return not self.lost and self.unread is None

    def lines(self) -> list[str]:
        found = [f"ended {len(self.closed)} run(s) left running by stopped workers: {', '.join(self.closed)}"] if self.closed else []
        if self.lost:
            found.append(f"MLflow lacks the records of finished trial(s) {', '.join(map(str, self.lost))}; see the worker logs")
        if self.unread:
            found.append(self.unread)
        return found


def audit_records(tracking: SweepTracking, study: optuna.Study, spool: Path | None = None) -> RecordsAudit:
    """End the sweep's runs left RUNNING whose trial is no longer running, and find the finished
    trials without a finished run (see the module doc). A store that cannot be read is said."""
    if tracking.settings is None or tracking.parent_run_id is None:
        return RecordsAudit()
    try:
        return _audit(tracking, study, trials_in_another_recorders_hands(spool) if spool is not None else set())
    except Exception as error:  # noqa: BLE001 - a store that cannot be read cannot show the records are there
        return RecordsAudit(unread=f"MLflow at {tracking.settings.label} could not be read to check the records ({one_line(error)})")


def _audit(tracking: SweepTracking, study: optuna.Study, sent_elsewhere: set[int]) -> RecordsAudit:
    from mlflow.entities import RunTag
    from optuna.trial import TrialState

    # Read after the spool folder was (a file is removed once its run is in the store).
    trials = {t.number: t for t in study.get_trials(deepcopy=False) if t.number not in sent_elsewhere}
    with mlflow_calls(tracking.settings):
        client = mlflow_client(tracking.settings.uri)
        runs = search_all(client, tracking.experiment_id, runs_filter(tracking.sweep))
        closed = []
        for run in runs:
            number = int(run.data.tags.get("trial", -1)) if run.data.tags.get("sweeper.kind") == TRIAL_KIND else None
            if number in sent_elsewhere:
                continue
            trial = trials.get(number) if number is not None else None
            if (
                run.info.status == "RUNNING"
                and run.info.run_id != tracking.parent_run_id
                and (trial is None or trial.state != TrialState.RUNNING)
            ):
                client.log_batch(run.info.run_id, tags=[RunTag("status", "killed")])
                client.set_terminated(run.info.run_id, status="KILLED")
                closed.append(run.data.tags.get("mlflow.runName", run.info.run_id))
    recorded = {
        int(run.data.tags["trial"])
        for run in runs
        if run.data.tags.get("sweeper.kind") == TRIAL_KIND and run.info.status == "FINISHED" and "objective" in run.data.metrics
    }
    finished = [n for n, t in trials.items() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return RecordsAudit(closed, sorted(set(finished) - recorded))
