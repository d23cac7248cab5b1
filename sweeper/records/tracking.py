"""A sweep's MLflow records: its parent run and its trials' child runs, where they are and what
is attached to the sweep's run. Reading the trials' runs back is `sweeper.records.trial_runs`'s,
the audit at a sweep's end `sweeper.records.audit`'s.

    tracking = prepare_sweep(cfg, "mlp-digits")            # the parent process, before workers
    reporter = tracking.trial_reporter(trial_cfg, trial_number=7, extra_tags={"worker": "host:123"})
    train(trial_cfg, [reporter, ...])                      # in a worker: a nested child run
    tracking.attach_report(report, "FINISHED")             # the comparison report, parent ended

`open_sweep` finds an existing sweep's records where its study says they are (report, confirm,
rerun, ui). The store and its settings are `sweeper.records.mlflow_store`'s; what a run records is
`sweeper.records.run_record`'s; the recorder of one run is `sweeper.records.recorder`'s.
`tracking.enabled: false` makes every entry point a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from sweeper.boundary.recorded_sweep import UNKNOWN, recorded_tracking
from sweeper.config import ConfigError, rules
from sweeper.records.mlflow_store import (
    TrackingSettings,
    connect,
    experiment_id_of,
    mlflow_calls,
    mlflow_client,
    one_line,
    tracking_settings,
)
from sweeper.records.recorder import MlflowRecorder, now_ms
from sweeper.records.run_buffer import MAX_TAG_LENGTH
from sweeper.records.run_record import (
    SWEEP_KIND,
    SWEEP_NODES,
    TRIAL_KIND,
    TRIAL_NODES,
    code_tags,
    flatten,
    plain_config,
    run_label,
    runs_filter,
)
from sweeper.records.spool import SPOOL_ENV, SpoolWriter
from sweeper.secrets import MASK, mask_text, mask_url
from sweeper.trial.events import Reporter

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from sweeper.analysis.report import Report

__all__ = [
    "SweepTracking",
    "find_sweep_run",
    "open_sweep",
    "prepare_sweep",
    "sweep_folder",
    "sweep_metrics",
    "trial_reporter",
]

logger = logging.getLogger(__name__)


def sweep_folder(holder: DictConfig | SweepTracking, sweep: str) -> Path:
    """Where a sweep's files go (worker logs, reports, confirmations): results/sweeps/<sweep>/."""
    return rules.sweep_folder(holder.results_dir if isinstance(holder, SweepTracking) else holder.get("results_dir", "results"), sweep)


# --- sweeps -----------------------------------------------------------------------------------


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep: str) -> Any | None:
    """The parent run of a sweep (the newest, should there be several), or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=runs_filter(sweep, SWEEP_KIND),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


class _Parents:
    """Parent run ids found in this process, so each worker asks the store only once."""

    found: dict[tuple[str, str, str], tuple[str, str | None]] = {}


@dataclass(frozen=True)
class SweepTracking:
    """A sweep's MLflow records: picklable, so it may travel to worker processes.

    `settings` is None when tracking is off: every method is then a no-op, except that `finish`
    still writes the comparison report to the sweep's folder.
    """

    settings: TrackingSettings | None
    sweep: str
    experiment_id: str | None = None
    parent_run_id: str | None = None
    results_dir: str = "results"

    def location(self) -> dict[str, str] | None:
        """Where the sweep's runs are, as its study records it (the URL's password masked):
        everything after the sweep (report, confirm, rerun, ui) files its runs there."""
        if self.settings is None:
            return None
        return {
            "uri": self.settings.label,
            "experiment": self.settings.experiment,
            "experiment_id": self.experiment_id or "",
            "parent_run_id": self.parent_run_id or "",
        }

    def trial_reporter(
        self,
        trial_cfg: DictConfig | Mapping,
        *,
        trial_number: int,
        overrides: Sequence[str] = (),
        extra_tags: Mapping[str, Any] | None = None,
    ) -> Reporter:
        """The Reporter that records one trial as a child run of the sweep's run."""
        header = self.trial_header(trial_cfg, trial_number=trial_number, overrides=overrides, extra_tags=extra_tags)
        return self.run_reporter(trial_cfg, TRIAL_KIND, header["run_name"], header["tags"], overrides)

    def trial_header(
        self,
        trial_cfg: DictConfig | Mapping,
        *,
        trial_number: int,
        overrides: Sequence[str] = (),
        extra_tags: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What makes a trial's run: its name, tags, overrides and config (a spool file's first line)."""
        return {
            "trial": trial_number,
            "run_name": run_label(f"trial {trial_number}", trial_cfg),
            "tags": {"sweeper.kind": TRIAL_KIND, "sweep": self.sweep, "trial": str(trial_number), **(extra_tags or {})},
            "overrides": list(overrides),
            "config": plain_config(trial_cfg),
        }

    def run_reporter(
        self,
        cfg: DictConfig | Mapping,
        kind: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        overrides: Sequence[str] = (),
    ) -> Reporter:
        """A Reporter recording a run of `kind` (trial, confirm) under the sweep's run, in the
        sweep's store (wherever `cfg` itself would record)."""
        if self.settings is None:
            return Reporter()
        tags = {"sweeper.kind": kind, "sweep": self.sweep, **(tags or {})}
        return MlflowRecorder(self.settings, cfg, self.locate, run_name=run_name, tags=tags, overrides=overrides)

    def locate(self, client: MlflowClient) -> tuple[str, str | None]:
        """(experiment id, parent run id) of the sweep, asked of the store once per process."""
        if self.experiment_id and self.parent_run_id:
            return self.experiment_id, self.parent_run_id
        key = (self.settings.uri, self.settings.experiment, self.sweep)
        if key not in _Parents.found:
            experiment_id = self.experiment_id or experiment_id_of(client, self.settings)
            parent = find_sweep_run(client, experiment_id, self.sweep)
            # No parent run (the sweep began with tracking off): the trial is recorded unnested.
            _Parents.found[key] = (experiment_id, parent.info.run_id if parent else None)
        return _Parents.found[key]

    def end(self, status: str) -> None:
        """End the sweep's run (FINISHED, KILLED) without a report."""
        self.attach_files([], "report", {"status": status.lower()}, status)

    def attach_report(self, report: Report, end_status: str | None = None) -> None:
        """Attach a written report to the sweep's run (under report/); its summary becomes the
        run's description. `end_status` also ends the run. A store that is down only warns."""
        tags = {"mlflow.note.content": report.summary, "trials": str(len(report.trials))}
        if end_status is not None:
            tags["status"] = end_status.lower()
        self.attach_files(report.files, "report", tags, end_status, sweep_metrics(report))

    def attach_files(
        self,
        files: Iterable[Path],
        artifact_path: str,
        tags: Mapping[str, str] | None = None,
        end_status: str | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Attach files (and set tags and metrics) to the sweep's run; `end_status` also ends it."""
        if self.settings is None or self.parent_run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        try:
            with mlflow_calls(self.settings):
                client = mlflow_client(self.settings.uri)
                for path in files:
                    client.log_artifact(self.parent_run_id, str(path), artifact_path=artifact_path)
                now = now_ms()
                client.log_batch(
                    self.parent_run_id,
                    metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
                    tags=[RunTag(key, mask_text(value)[:MAX_TAG_LENGTH]) for key, value in (tags or {}).items()],
                )
                if end_status is not None:
                    client.set_terminated(self.parent_run_id, status=end_status)
        except Exception as error:  # noqa: BLE001 - the files are on disk; the record is a copy
            logger.warning(
                "sweeper: could not attach files to MLflow run %s at %s (%s); they are on disk.",
                self.parent_run_id,
                self.settings.label,
                one_line(error),
            )

    def attach_table(self, frame: Any, artifact_file: str) -> None:
        """A table on the sweep's run (MLflow's JSON table artifact, shown in its UI's artifact view)."""
        if self.settings is None or self.parent_run_id is None:
            return
        try:
            with mlflow_calls(self.settings):
                mlflow_client(self.settings.uri).log_table(self.parent_run_id, data=frame, artifact_file=artifact_file)
        except Exception as error:  # noqa: BLE001 - the table is on disk too
            logger.warning("sweeper: could not attach %s to MLflow run %s (%s).", artifact_file, self.parent_run_id, one_line(error))


def sweep_metrics(report: Report) -> dict[str, float]:
    """The sweep's outcome as metrics of its run, so the runs table shows it: trial counts, the
    best objective overall, per slice strategy and per cycle shape (over complete trials)."""
    counts = report.trials["state"].value_counts() if len(report.trials) else {}
    metrics = {f"trials_{state}": float(counts.get(state, 0)) for state in ("complete", "pruned", "failed")}
    objective = report.objective
    for by, table in (("strategy", report.by_strategy), ("shape", report.by_shape)):
        for _, row in table.iterrows() if len(table) else ():
            if row["best"] == row["best"]:  # not NaN: the group has a complete trial
                metrics[f"best_{objective}_{by}_{row[by]}"] = float(row["best"])
    best = [value for key, value in metrics.items() if key.startswith(f"best_{objective}_strategy_")]
    if best:
        metrics[f"best_{objective}"] = max(best) if report.direction == "maximize" else min(best)
    return metrics


def open_sweep(cfg: DictConfig, study: optuna.Study) -> SweepTracking:
    """The records of an existing sweep, where the sweep recorded them (its study says), not
    where today's config would put a new one: `report`, `confirm` and `ui` of any sweep, run
    from anywhere, find its experiment and file their runs under its parent run. `cfg` gives
    what is not the sweep's: how to talk to the store, and the URL's password (a recorded URL
    has it masked)."""
    results_dir = str(cfg.get("results_dir", "results"))
    if study.user_attrs.get("tracking", UNKNOWN) is None:  # the sweep ran with tracking off
        return SweepTracking(None, study.study_name, results_dir=results_dir)
    settings = tracking_settings(cfg)
    # checked (sweeper.boundary): the user's own store, or an SQLite store that exists here
    recorded = recorded_tracking(study.user_attrs, settings.label if settings is not None else None)
    if isinstance(recorded, Mapping):
        settings = _recorded_settings(recorded, settings, cfg)
    elif settings is not None:  # a sweep from before locations were recorded: its experiment bore its name
        settings = replace(settings, experiment=study.study_name)
    if settings is None:
        return SweepTracking(None, study.study_name, results_dir=results_dir)
    client, experiment_id = connect(settings, create=False)
    parent = recorded.get("parent_run_id") if isinstance(recorded, Mapping) else None
    if not parent:
        with mlflow_calls(settings):
            run = find_sweep_run(client, experiment_id, study.study_name)
        parent = run.info.run_id if run else None
    return SweepTracking(settings, study.study_name, experiment_id, parent or None, results_dir)


def _recorded_settings(recorded: Mapping, current: TrackingSettings | None, cfg: DictConfig) -> TrackingSettings:
    """The sweep's store and experiment. A recorded URL with a masked password is opened with
    the user's own URL when it is the same one (same masked form)."""
    uri = str(recorded["uri"])
    if current is not None and current.label == uri:
        uri = current.uri
    elif MASK in uri:
        raise ConfigError(
            f"tracking.uri: the sweep was recorded in MLflow at {uri}, whose password is not kept; "
            f"export MLFLOW_TRACKING_URI with that server's URL (password included) and add tracking=server."
        )
    node = cfg.get("tracking") or {}
    return TrackingSettings(
        uri=uri,
        experiment=str(recorded["experiment"]),
        artifacts=None,  # the experiment exists: its artifact location is its own
        request_timeout=int(node.get("request_timeout", 10)),
        request_retries=int(node.get("request_retries", 1)),
        results_dir=str(cfg.get("results_dir", "results")),
        schedule_plot=bool(node.get("schedule_plot", True)),
    )


def prepare_sweep(cfg: DictConfig, study_name: str, study: optuna.Study | None = None) -> SweepTracking:
    """Once per sweep, in the parent process, before any worker starts: create the store and the
    experiment (several processes creating one SQLite store at once fail), start the sweep's
    parent run (or on resume find it again and mark it running), record the sweep's settings.

    `study` is the sweep's study when it exists already. The two stores must agree on what the
    sweep is: a study whose recorded run the MLflow store lacks (a store emptied or replaced), or
    an MLflow sweep with trial runs but no study (a study storage emptied or replaced), is refused
    before anything changes: continuing would file the trials of two sweeps as one.
    A store that cannot be reached raises ConfigError."""
    results_dir = str(cfg.get("results_dir", "results"))
    settings = tracking_settings(cfg)
    if settings is None:
        return SweepTracking(None, study_name, results_dir=results_dir)
    recorded = study.user_attrs.get("tracking") if study is not None else None
    # A resumed sweep's records exist: none are made (no store, no experiment) if they are not there.
    client, experiment_id = connect(settings, create=not (isinstance(recorded, Mapping) and recorded.get("parent_run_id")))
    config = plain_config(cfg)
    try:
        with mlflow_calls(settings):
            run = _sweep_run(client, settings, experiment_id, study_name, study, recorded)
            if run is None:
                run = client.create_run(experiment_id, run_name=study_name)
                recorder = MlflowRecorder(settings, None, _nowhere, run_id=run.info.run_id)
                nodes = (*SWEEP_NODES, *TRIAL_NODES, "sweep")
                recorder.queue_params(flatten({key: config[key] for key in nodes if key in config}))
                recorder.record_config(config)
            else:
                # A resumed sweep. Params are immutable in MLflow: what may change goes to tags.
                client.update_run(run.info.run_id, status="RUNNING")
                recorder = MlflowRecorder(settings, None, _nowhere, run_id=run.info.run_id)
            recorder.queue_tags(_sweep_tags(config, study_name))
            recorder.send()
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - said in one line, before any study exists
        raise ConfigError(f"tracking.uri: MLflow at {settings.label} could not start the sweep's run: {one_line(error)}") from None
    return SweepTracking(settings, study_name, experiment_id, run.info.run_id, results_dir)


def _sweep_run(
    client: MlflowClient,
    settings: TrackingSettings,
    experiment_id: str,
    study_name: str,
    study: optuna.Study | None,
    recorded: Any,
) -> Any | None:
    """The sweep's parent run, if it has one already, checked against the study."""
    from mlflow.exceptions import MlflowException

    if isinstance(recorded, Mapping) and recorded.get("parent_run_id"):
        try:
            run = client.get_run(recorded["parent_run_id"])
        except MlflowException:
            run = None
        if run is None or run.info.experiment_id != experiment_id:
            raise ConfigError(
                f"tracking.uri: the study of sweep {study_name!r} records its MLflow run {recorded['parent_run_id']} "
                f"in {recorded.get('uri')}, and MLflow at {settings.label} does not hold it (the store was emptied "
                f"or replaced). Nothing was changed; point tracking.uri at the sweep's store, or give this sweep "
                f"a new name (sweep.name=...)."
            )
        return run
    run = find_sweep_run(client, experiment_id, study_name)
    if run is not None and study is None:
        trials = client.search_runs([experiment_id], runs_filter(study_name, TRIAL_KIND), max_results=1)
        if trials:
            raise ConfigError(
                f"storage.url: MLflow at {settings.label} holds sweep {study_name!r} (run {run.info.run_id}, with "
                f"trial runs), but the study storage has no study of that name (it was emptied or replaced). "
                f"Nothing was changed; point storage.url at the sweep's storage, or give this sweep a new name "
                f"(sweep.name=...)."
            )
    return run


def _nowhere(client: MlflowClient) -> tuple[str, str | None]:
    raise AssertionError("the run exists already")  # for recorders given an existing run id


def _sweep_tags(config: Mapping, study_name: str) -> dict[str, str]:
    train = config.get("train") or {}
    return {
        "sweeper.kind": SWEEP_KIND,
        "sweep": study_name,
        "model": str((config.get("model") or {}).get("name", "")),
        "data": str((config.get("data") or {}).get("name", "")),
        "objective": f"{train.get('objective')} ({train.get('direction')})",
        "n_trials": str((config.get("sweep") or {}).get("n_trials", "")),
        "storage": mask_url(str((config.get("storage") or {}).get("url", ""))),
        "status": "running",
        **code_tags(),
    }


def trial_reporter(
    trial_cfg: DictConfig,
    *,
    study_name: str,
    trial_number: int,
    overrides: Sequence[str] = (),
    extra_tags: Mapping[str, Any] | None = None,
    location: Mapping[str, str] | None = None,
) -> Reporter:
    """For a worker process that has the config but not the parent's SweepTracking. A local worker
    of a sweep (SPOOL_ENV set) hands its records to the machine's recorder through a spool file;
    any other (a job, a worker joined by hand) records to MLflow itself: the sweep's run is where
    the study's recorded `location` says, else looked up by its tags (once per process) at the
    trial's first flush."""
    location = location or {}
    sweep = SweepTracking(
        tracking_settings(trial_cfg),
        study_name,
        location.get("experiment_id") or None,
        location.get("parent_run_id") or None,
        results_dir=str(trial_cfg.get("results_dir", "results")),
    )
    spool = os.environ.get(SPOOL_ENV)
    about = {"trial_number": trial_number, "overrides": overrides, "extra_tags": extra_tags}
    if spool and sweep.settings is not None:
        return SpoolWriter(Path(spool), sweep.trial_header(trial_cfg, **about))
    return sweep.trial_reporter(trial_cfg, **about)
