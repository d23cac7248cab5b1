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
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from sweeper.config import ConfigError
from sweeper.records.mlflow_store import mlflow_calls, mlflow_client
from sweeper.records.run_record import TRIAL_KIND
from sweeper.records.tracking import SweepTracking

__all__ = ["MlflowUiServer", "run_link", "share_view", "sweep_link", "sweep_view", "browsable_base"]

SHARED_VIEW_TAG = "mlflow.sharedViewState."
START_SECONDS = 90  # for a new server to answer (its first start creates nothing: the store exists)


def sweep_view(sweep: str, objective: str, direction: str = "maximize", compared: str = "strategy") -> dict[str, Any]:
    """The UI state that compares a sweep's arms: its trials alone, grouped by the compared tag
    (`strategy`, or `shape` after a shapes comparison; each curve's mean and spread per group),
    best objective first in either direction. Pruned trials are left out: their partial scores
    would pull a group's mean down (`tags.status = 'pruned'` shows them)."""
    return {
        "searchFilter": f"tags.`sweeper.kind` = '{TRIAL_KIND}' and tags.sweep = '{sweep}' and tags.status != 'pruned'",
        "orderByKey": "metrics.`objective`",
        "orderByAsc": direction == "minimize",
        "groupBy": f"tag.average.{compared}",  # mode.aggregate.key, as the UI writes it
        "useGroupedValuesInCharts": True,
        "groupsExpanded": {},
        "runListHidden": False,
        "hideEmptyCharts": True,
        "selectedColumns": [
            "metrics.`objective`",
            f"metrics.`valid_{objective}`",
            "metrics.`valid_loss`",
            "tags.`strategy`",
            "tags.`shape`",
            "params.`lr.high`",
        ],  # fmt: skip
    }


def share_view(tracking: SweepTracking, objective: str, direction: str = "maximize", compared: str = "strategy") -> str:
    """Keep the sweep's view in its experiment (idempotent); return the key that opens it."""
    state = json.dumps(sweep_view(tracking.sweep, objective, direction, compared), sort_keys=True)
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
        with open(self.log, "ab") as log:  # the server keeps its own descriptor
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited at its start; its log: {self.log}")
            if self.answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s; its log: {self.log}")

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
