"""Against a real `mlflow server` on 127.0.0.1: a small sweep recorded through the recorder over
REST, read back through the server's own REST API (nested runs, params, tags, every metric
history), and a server that stops mid-sweep and comes back without a record lost."""

from __future__ import annotations

import logging

import pytest
import requests
from helpers.played import feed_trial
from helpers.servers import MlflowServer

from sweeper.records.run_record import plain_config, result_curves
from sweeper.records.tracking import prepare_sweep
from sweeper.trial.events import Reporter

pytestmark = pytest.mark.slow

API = "/api/2.0/mlflow"


def search_runs(server, experiment_id: str, filter_string: str) -> list[dict]:
    answer = requests.post(
        f"{server.url}{API}/runs/search", json={"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}, timeout=30
    )
    answer.raise_for_status()
    return answer.json().get("runs", [])


def metric_history(server, run_id: str, key: str) -> list[tuple[int, float]]:
    answer = requests.get(
        f"{server.url}{API}/metrics/get-history", params={"run_id": run_id, "metric_key": key, "max_results": 25000}, timeout=30
    )
    answer.raise_for_status()
    return sorted((int(m.get("step", 0)), m["value"]) for m in answer.json().get("metrics", []))


def as_dict(entries: list[dict]) -> dict[str, str]:
    return {entry["key"]: entry["value"] for entry in entries}


SECRET = "hunter2"


@pytest.fixture
def server_config(tracked_config, monkeypatch, mlflow_server):
    """Configs that record to the running server (tracking=server, its URL from the environment,
    with credentials in it as a shared server's URL may have)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url.replace("://", f"://sweeper:{SECRET}@"))
    return lambda *overrides: tracked_config("tracking=server", *overrides)


def test_a_sweep_recorded_over_rest_reads_back_through_the_rest_api(mlflow_server, server_config, capfd):
    cfg = server_config("lr=fastai")
    tracking = prepare_sweep(cfg, "rest")
    results = {}
    for number in range(3):
        reporter = tracking.trial_reporter(
            cfg, trial_number=number, overrides=[f"lr.high={number}e-3"], extra_tags={"worker": f"w{number % 2}"}
        )
        result = feed_trial(reporter, plain_config(cfg), seed=number)
        results[number] = (reporter.run_id, result)

    children = search_runs(mlflow_server, tracking.experiment_id, f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'")
    assert len(children) == 3  # every trial nested under the sweep's run
    for child in children:
        tags, params = as_dict(child["data"]["tags"]), as_dict(child["data"]["params"])
        number = int(tags["trial"])
        run_id, result = results[number]
        assert child["info"]["run_id"] == run_id and child["info"]["status"] == "FINISHED"
        assert tags["strategy"] == params["strategy"] == "fastai" and tags["sweep"] == "rest"
        assert params["peak_lr_2"] == repr(1e-3)
        for key, curve in result_curves(result).items():
            assert metric_history(mlflow_server, run_id, key) == curve, key  # every value, at its step
    assert len(metric_history(mlflow_server, results[0][0], "loss")) == 10

    # The server filters on the tags too, as the UI's search box does.
    assert len(search_runs(mlflow_server, tracking.experiment_id, "tags.worker = 'w0'")) == 2
    parent = requests.get(f"{mlflow_server.url}{API}/runs/get", params={"run_id": tracking.parent_run_id}, timeout=30).json()
    assert as_dict(parent["run"]["data"]["tags"])["sweeper.kind"] == "sweep"

    # The tracking URL's password reached neither the records nor the console.
    recorded = str([parent, children])
    printed = capfd.readouterr()
    assert SECRET not in recorded and SECRET not in printed.out + printed.err


def test_a_server_that_stops_mid_sweep_loses_no_record(mlflow_server, server_config, caplog):
    caplog.set_level(logging.WARNING, logger="sweeper.records.tracking")
    cfg = server_config()
    tracking = prepare_sweep(cfg, "outage")

    class StopServerAfterFirstEpoch(Reporter):
        def on_epoch(self, event):
            if event.epoch == 0:
                mlflow_server.stop()

    first = tracking.trial_reporter(cfg, trial_number=0)
    result = feed_trial([StopServerAfterFirstEpoch(), first], plain_config(cfg), epochs=3)  # the trial goes on
    assert sum("cannot be reached" in r.getMessage() for r in caplog.records) == 1

    mlflow_server.start()  # back, on the same port and store
    second = tracking.trial_reporter(cfg, trial_number=1)
    feed_trial(second, plain_config(cfg))  # its flushes also send what the first trial kept
    runs = search_runs(mlflow_server, tracking.experiment_id, f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'")
    assert {r["info"]["run_id"]: r["info"]["status"] for r in runs} == {first.run_id: "FINISHED", second.run_id: "FINISHED"}
    for key, curve in result_curves(result).items():
        assert metric_history(mlflow_server, first.run_id, key) == curve, key


@pytest.mark.timeout(460)  # beyond the sweep's own limit below
def test_a_real_sweep_reads_back_through_the_server_and_its_trials_rerun_exactly(sweeper_cli, tmp_path, monkeypatch):
    sweep = ["sweep.name=real", "sweep.n_trials=3", "sweep.workers=1", "sweep.cpu_threads=1", "sweep.poll=0.5",
             "sweep.live=false", "train.epochs=1", "train.threads=1", "pruner=none", "sampler.seed=0"]  # fmt: skip
    done = sweeper_cli("sweep", *sweep, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    server = MlflowServer(tmp_path / "results").start()  # the sweep's own store, results/mlflow.db
    try:
        experiment = requests.get(f"{server.url}{API}/experiments/get-by-name", params={"experiment_name": "real"}, timeout=30)
        experiment_id = experiment.json()["experiment"]["experiment_id"]
        (parent,) = search_runs(server, experiment_id, "tags.`sweeper.kind` = 'sweep'")
        parent_id = parent["info"]["run_id"]
        assert parent["info"]["status"] == "FINISHED"
        children = search_runs(server, experiment_id, f"tags.mlflow.parentRunId = '{parent_id}'")
        assert sorted(int(as_dict(c["data"]["tags"])["trial"]) for c in children) == [0, 1, 2]
        for child in children:
            steps = int(as_dict(child["data"]["params"])["total_steps"])
            assert len(metric_history(server, child["info"]["run_id"], "lr_0")) == steps  # every training batch
            assert len(metric_history(server, child["info"]["run_id"], "valid_accuracy")) == 1
        listed = requests.get(f"{server.url}{API}/artifacts/list", params={"run_id": parent_id, "path": "report"}, timeout=30)
        assert "report/report.md" in {f["path"] for f in listed.json()["files"]}

        # Any trial reruns from its run id, through the server, bitwise equal on CPU.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        trial = children[0]["info"]["run_id"]
        again = sweeper_cli("rerun", "--strict", trial, "tracking=server", "tracking.experiment=real")
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "(bitwise equal)" in again.stdout
        reruns = search_runs(server, experiment_id, f"tags.`sweeper.rerun_of` = '{trial}'")
        assert len(reruns) == 1 and as_dict(reruns[0]["data"]["tags"])["rerun_exact"] == "true"
    finally:
        server.stop()


def test_the_ui_s_server_is_given_its_store_outside_its_argv(tmp_path):
    """`sweeper ui` over a database store starts `mlflow server` on it; a database's URL may hold
    its password, and `ps` shows every user every process's argv: the URL goes in the
    environment, which the server and its workers read it from (they answer, so they found it)."""
    import os
    from pathlib import Path

    from helpers.servers import free_port

    from sweeper.analysis.ui import MlflowUiServer

    store = f"sqlite:///{tmp_path}/Pr0c-s3cret-store.db"
    with MlflowUiServer(store, free_port(), tmp_path / "ui.log") as server:
        group = os.getpgid(server.process.pid)
        argvs = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getpgid(int(entry.name)) == group:
                    argvs.append((entry / "cmdline").read_bytes())
            except (FileNotFoundError, ProcessLookupError):
                pass  # ended meanwhile
        assert any(b"mlflow" in argv for argv in argvs) and server.answers()
        assert not any(b"Pr0c-s3cret" in argv for argv in argvs), argvs
