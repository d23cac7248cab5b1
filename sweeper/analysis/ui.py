"""The MLflow UI opened on a sweep's comparison: its trials, grouped by slice strategy, as charts.

    key = share_view(tracking, "accuracy")       # the view, kept in the sweep's experiment
    with MlflowUiServer(tracking.settings.uri, port=5000, log=path) as server:
        print(sweep_link(server.url, tracking.experiment_id, key))

How the MLflow UI (3.x) is told what to show, learnt from its code:
- `workflowType=machine_learning` in the URL opens the model-training side (runs), not the GenAI
  side (traces) that a browser new to MLflow starts on, whatever the experiment's
  `mlflow.experimentKind` tag says (sweeper sets that one too, for the experiments list).
- A saved view is an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON (the
  run filter, the order, the grouping, ...); `viewStateShareKey=<key>` in the URL loads it. This
  is the UI's own "share" feature, so the link keeps working for anyone who opens it.
- `compareRunsMode=CHART` opens the chart view, in which a grouping shows each group's mean and
  spread per curve.
- `groupBy` may name several keys (`{"aggregateFunction": ..., "groupByKeys": [...]}`): a group
  per combination of their values, named `strategy: fastai, status: pruned` (a value a run lacks
  reads `(none)`).
- A shared view drops the fields about single runs (`runsHidden`, `runsVisibilityMap`,
  `runsPinned`, `runsExpanded`): it cannot hide a run from its group's mean.
- Groups are ordered by their aggregate of the sort metric (`orderByKey`, `orderByAsc`).
- `compareRunCharts` and `compareRunSections`, when given, are the charts and their order; in a
  section marked `isReordered` the UI appends the metrics it finds beyond them at its end (in one
  that is not, it files them alphabetically, `loss` before `objective`).
- A `PARALLEL` chart draws `selectedParams` and `selectedMetrics`, and leaves out a run (or a
  group, when grouped) that lacks one of them.
What the URL state cannot express is recorded: the trials' `status` tag and their names say
`pruned`, and the sweep's run (a group of its own in the view) holds the report, the per-trial
parallel coordinates (`report/parallel_coordinate.png`) and the verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import optuna
from optuna.trial import TrialState

from sweeper.boundary.checked_study import checked_study
from sweeper.boundary.recorded_study import trial_overrides
from sweeper.config import ConfigError
from sweeper.records.mlflow_store import mlflow_calls, mlflow_client
from sweeper.records.run_record import ABLATION_KIND, CONFIRM_KIND, RERUN_KIND, runs_filter
from sweeper.records.tracking import SweepTracking

__all__ = [
    "MlflowUiServer",
    "browsable_base",
    "run_link",
    "sampled_settings",
    "share_view",
    "sweep_link",
    "sweep_view",
]

SHARED_VIEW_TAG = "mlflow.sharedViewState."
START_SECONDS = 90  # for a new server to answer (its first start creates nothing: the store exists)


OTHER_KINDS = (CONFIRM_KIND, ABLATION_KIND, RERUN_KIND)  # filed under the sweep, but no trials of it
MODEL_SECTION, SYSTEM_SECTION = "sweeper-model-metrics", "sweeper-system-metrics"


def sweep_view(
    sweep: str, objective: str, direction: str = "maximize", compared: str = "strategy", sampled: Sequence[str] = ()
) -> dict[str, Any]:
    """The UI state that compares a sweep's arms, as MLflow 3's experiment page reads it.

    - The sweep's trials grouped by the compared tag (`strategy`, or `shape` after a shapes
      comparison) and by their `status` tag: `strategy: fastai, status: finished` holds the
      complete trials, whose mean (in the table and in every chart, with its spread) no pruned
      trial's partial score pulls down; `strategy: fastai, status: pruned` holds the pruned
      ones, named `trial 9 · pruned · ...`. A shared view cannot hide single runs (MLflow drops
      `runsHidden` from it), so their own group is what keeps them out of the others' means.
    - The sweep's own run (the report, the verdict in its description) is in view too, a group
      of its own (`strategy: (none), status: finished`): one click opens it.
    - Best first in either direction: MLflow orders groups by their mean of the sort metric, and
      the rows within a group by it.
    - The charts in order: the objective, a parallel-coordinates chart of the settings the search
      drew (`sampled`, not the ~50 config keys every run holds), then the validation and training
      losses; MLflow appends the others (step loss, each group's lr, momentum) after them, since
      the section counts as reordered.
    """
    metrics = list(dict.fromkeys(["objective", f"valid_{objective}", "valid_loss", "train_loss"]))
    charts = [_line_chart(metrics[0]), _parallel_chart(sampled), *(_line_chart(key) for key in metrics[1:])]
    return {
        "searchFilter": runs_filter(sweep, not_kinds=OTHER_KINDS),
        "orderByKey": "metrics.`objective`",
        "orderByAsc": direction == "minimize",
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": key} for key in (compared, "status")]},
        "useGroupedValuesInCharts": True,
        "groupsExpanded": {},  # every group open
        "runsHiddenMode": "SHOW_ALL",
        "runListHidden": False,
        "hideEmptyCharts": True,
        "isAccordionReordered": True,
        "compareRunSections": [_section(MODEL_SECTION, "Model metrics", reordered=True), _section(SYSTEM_SECTION, "System metrics")],
        "compareRunCharts": charts,
        "selectedColumns": [
            "metrics.`objective`",
            f"metrics.`valid_{objective}`",
            "metrics.`valid_loss`",
            "tags.`status`",
            "tags.`strategy`",
            "tags.`shape`",
            *(f"params.`{key}`" for key in sampled),
        ],  # fmt: skip
    }


def _section(uuid: str, name: str, reordered: bool = False) -> dict[str, Any]:
    return {"uuid": uuid, "name": name, "display": True, "isReordered": reordered, "deleted": False, "isGenerated": True}


def _chart(kind: str, uuid: str) -> dict[str, Any]:
    return {
        "uuid": f"sweeper-{uuid}",
        "type": kind,
        "metricSectionId": MODEL_SECTION,
        "runsCountToCompare": 10,
        "deleted": False,
        "isGenerated": True,
    }


def _line_chart(metric: str) -> dict[str, Any]:
    """A metric over its steps (epochs for the epoch metrics), as the UI makes one."""
    return {
        **_chart("LINE", metric),
        "metricKey": metric,
        "lineSmoothness": 0,
        "xAxisKey": "step",
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def _parallel_chart(sampled: Sequence[str]) -> dict[str, Any]:
    return {
        **_chart("PARALLEL", "sampled-settings"),
        "selectedParams": list(sampled),
        "selectedMetrics": ["objective"],
        "showAllRuns": False,
    }


def sampled_settings(study: optuna.Study) -> list[str]:
    """The config keys (MLflow params) of the numbers the search drew for every complete trial:
    the head lr, `search.params`, a shape's settings when every trial ran that shape. The UI's
    parallel-coordinates chart leaves out a run (or group) that lacks one of its params, and a
    conditional setting (one shape's, geometric's lr.low) would leave out the others."""
    study = checked_study(study)  # a study given by any caller is read through the boundary
    base = set(trial_overrides(study.user_attrs))
    drawn: list[set[str]] = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        overrides = (o.partition("=") for o in trial_overrides(trial.user_attrs) if o not in base)
        drawn.append({key for key, _, value in overrides if _is_number(value)})
    return sorted(set.intersection(*drawn)) if drawn else []


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def share_view(
    tracking: SweepTracking, objective: str, direction: str = "maximize", compared: str = "strategy", sampled: Sequence[str] = ()
) -> str:
    """Keep the sweep's view in its experiment (idempotent); return the key that opens it."""
    state = json.dumps(sweep_view(tracking.sweep, objective, direction, compared, sampled), sort_keys=True)
    key = hashlib.sha256(state.encode()).hexdigest()[:20]
    with mlflow_calls(tracking.settings):
        mlflow_client(tracking.settings.uri).set_experiment_tag(tracking.experiment_id, SHARED_VIEW_TAG + key, state)
    return key


def sweep_link(base_url: str, experiment_id: str, key: str) -> str:
    query = urlencode({"viewStateShareKey": key, "compareRunsMode": "CHART", "workflowType": "machine_learning"})
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_link(base_url: str, experiment_id: str, run_id: str) -> str:
    """A run's page: for the sweep's own run, its description leads with the verdict."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def browsable_base(uri: str) -> str:
    """A tracking server's URL as a browser should open it: no credentials in it."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class MlflowUiServer:
    """`mlflow server` on 127.0.0.1 over a store, for as long as the `with` block lasts (its
    worker processes too: it runs in a process group of its own, stopped as a whole)."""

    def __init__(self, backend_uri: str, port: int, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.backend_uri, self.port, self.log, self.extra_args = backend_uri, port, log, extra_args
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> MlflowUiServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = START_SECONDS) -> MlflowUiServer:
        if not port_is_free(self.port):
            raise ConfigError(f"--port: {self.port} is taken on 127.0.0.1; pick another, e.g. --port {self.port + 1}.")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", *self.extra_args,
        ]  # fmt: skip
        # The store's URL (a database's may hold its password) goes in the environment, which
        # `mlflow server` reads it from and passes on to its workers: any user of the machine can
        # read a process's argv (ps). Its job runners (GenAI evaluation jobs, four more
        # processes) are of no use here.
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": self.backend_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = self.launch(command, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited at its start; its log: {self.log}")
            if self.answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; its log: {self.log}")

    def launch(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        """The server's process: its output to the log, in a process group of its own (stop() ends the group)."""
        with open(self.log, "ab") as log:  # the server keeps its own descriptor
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait(self) -> int:
        """Until the server ends (or Ctrl-C, which the caller handles)."""
        return self.process.wait() if self.process else 0

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the server binds: a port whose last connections are closing (TIME_WAIT) is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
