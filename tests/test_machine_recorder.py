"""The machine's recorder: workers write spool files, one process sends them to MLflow.

A trial spooled and replayed is recorded as the recorder of one run records it directly (the
reference: tests/test_tracking.py checks that one against MLflow); a worker killed mid-trial
loses nothing it wrote; a recorder stopped part way and started again records nothing twice; a
worker that hands its records over never loads MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from helpers.played import feed_trial
from mlflow import MlflowClient

from sweeper.records.machine_recorder import MachineRecorder
from sweeper.records.run_record import plain_config
from sweeper.records.sender import wait_for_records
from sweeper.records.spool import SpoolWriter, spool_files
from sweeper.records.tracking import prepare_sweep
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent

KEYS = ("lr_0", "lr_2", "momentum", "loss", "objective", "valid_loss", "train_loss", "valid_accuracy")


class KeepsWeights(Reporter):
    """As the model keeper does at a trial's end, before the recorder hears of it."""

    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def on_end(self, result) -> None:
        self.recorder.attach("model.pt", b"weights")
        self.recorder.queue_tags({"saved_model": "model.pt"})


def runs_by_trial(client: MlflowClient, tracking) -> dict[int, list]:
    found: dict[int, list] = {}
    for run in client.search_runs([tracking.experiment_id], f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'"):
        found.setdefault(int(run.data.tags["trial"]), []).append(run)
    return found


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_spooled_trial_is_recorded_as_the_direct_recorder_records_it(tracked_config, tmp_path):
    cfg = tracked_config("lr=geometric", "lr.low=1e-5", "lr.high=1e-3")
    tracking = prepare_sweep(cfg, "spooled")
    overrides, tags = ["lr=geometric", "lr.high=0.001"], {"worker": "w0"}
    direct = tracking.trial_reporter(cfg, trial_number=0, overrides=overrides, extra_tags=tags)
    feed_trial([KeepsWeights(direct), direct], plain_config(cfg))  # the reference
    folder = tmp_path / "spool"
    writer = SpoolWriter(folder, tracking.trial_header(cfg, trial_number=1, overrides=overrides, extra_tags=tags))
    feed_trial([KeepsWeights(writer), writer], plain_config(cfg))  # the same trial, handed over
    MachineRecorder(tracking, folder).start().close()
    wait_for_records()

    client = MlflowClient(tracking.settings.uri)
    (reference,), (spooled,) = runs_by_trial(client, tracking)[0], runs_by_trial(client, tracking)[1]
    assert spooled.info.status == reference.info.status == "FINISHED"
    assert spooled.data.params == reference.data.params
    differ = {"trial", "mlflow.runName"}
    assert {k: v for k, v in spooled.data.tags.items() if k not in differ} == {
        k: v for k, v in reference.data.tags.items() if k not in differ
    }
    for key in KEYS:
        assert history(client, spooled.info.run_id, key) == history(client, reference.info.run_id, key), key
    artifacts = {a.path for a in client.list_artifacts(spooled.info.run_id)}
    assert artifacts == {a.path for a in client.list_artifacts(reference.info.run_id)}
    assert {"config.yaml", "environment.json", "schedule.png", "model.pt"} <= artifacts
    assert spooled.data.tags["saved_model"] == "model.pt"
    # the worker's times, not the recorder's: the run began when the trial did
    assert spooled.info.start_time <= min(m.timestamp for m in client.get_metric_history(spooled.info.run_id, "loss"))
    assert list(folder.iterdir()) == [folder / "recorder.lock"]  # sent, so removed


KILLED_MID_TRIAL = """
import json, os, signal, sys
from sweeper.records.spool import SpoolWriter
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, StepEvent
writer = SpoolWriter(__import__("pathlib").Path(sys.argv[1]), json.loads(sys.argv[2]))
writer.on_start(StartEvent({}, (1e-3,), 1, 6, "cpu"))
for step in range(4):
    writer.on_step(StepEvent(step, step // 3, "train", (1e-3 * (step + 1),), 0.9, 1.0 / (step + 1)))
    if step == 2:
        writer.on_epoch(EpochEvent(0, 3, 0.5, 0.4, {"accuracy": 0.7}, 0.7))
print(json.dumps(sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_killed_mid_trial_loses_nothing_it_wrote_and_never_loaded_mlflow(tracked_config, tmp_path):
    cfg = tracked_config()
    tracking = prepare_sweep(cfg, "killed")
    folder = tmp_path / "spool"
    header = json.dumps(tracking.trial_header(cfg, trial_number=3))
    worker = subprocess.run(
        [sys.executable, "-c", KILLED_MID_TRIAL, str(folder), header], capture_output=True, text=True, env=os.environ, timeout=300
    )
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    assert json.loads(worker.stdout) == []  # the worker handed its records over without MLflow
    MachineRecorder(tracking, folder).start().close()

    client = MlflowClient(tracking.settings.uri)
    (run,) = runs_by_trial(client, tracking)[3]
    assert run.info.status == "RUNNING"  # not ended by anyone yet: the sweep's audit ends it (test_faults.py)
    assert history(client, run.info.run_id, "lr_0") == [(step, 1e-3 * (step + 1)) for step in range(4)]
    assert history(client, run.info.run_id, "objective") == [(0, 0.7)]
    assert spool_files(folder) == []


def test_a_recorder_stopped_part_way_and_started_again_records_nothing_twice(tracked_config, tmp_path):
    cfg = tracked_config()
    tracking = prepare_sweep(cfg, "restarted")
    folder = tmp_path / "spool"
    writer = SpoolWriter(folder, tracking.trial_header(cfg, trial_number=0))
    writer.on_start(StartEvent(plain_config(cfg), (1e-3,), 1, 4, "cpu"))
    for step in range(2):
        writer.on_step(StepEvent(step, 0, "train", (1e-3,), 0.9, 1.0 / (step + 1)))
    writer.on_epoch(EpochEvent(0, 2, 0.5, 0.4, {"accuracy": 0.6, "loss": 0.4}, 0.6))
    MachineRecorder(tracking, folder).start().close()  # stopped while the trial still runs: the file stays
    assert spool_files(folder) == [writer.path] and writer.path.with_suffix(".run").exists()

    for step in range(2, 4):
        writer.on_step(StepEvent(step, 1, "train", (1e-3,), 0.9, 1.0 / (step + 1)))
    writer.on_epoch(EpochEvent(1, 4, 0.3, 0.2, {"accuracy": 0.8, "loss": 0.2}, 0.8))
    result = feed_trial([], {})  # an end of the right shape
    result.objective, result.steps, result.epochs = 0.8, [], []
    writer.on_end(result)
    MachineRecorder(tracking, folder).start().close()  # a new recorder replays the file from its start

    client = MlflowClient(tracking.settings.uri)
    (run,) = runs_by_trial(client, tracking)[0]  # one run: the second recorder found the first's
    assert run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "loss") == [(step, 1.0 / (step + 1)) for step in range(4)]  # each once
    assert history(client, run.info.run_id, "objective") == [(0, 0.6), (1, 0.8)]
    assert spool_files(folder) == [] and not writer.path.with_suffix(".run").exists()
