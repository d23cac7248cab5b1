"""A full disk (ENOSPC) on every write path: the study, the MLflow store, the report, the
workers' logs. Each thing that could not be written is said in one line, with no traceback; the
command exits non-zero; no finished trial loses its records (a trial whose records could not be
written fails instead, and runs again); and once space returns, the same command finishes with
no record missing.

The disks are real where this process may mount one (root, as CI runs): a small tmpfs holds the
folder, and a file fills it. The sweeps are real `sweeper sweep` processes whose trainer fills
the disk during a trial's first epoch, after the stores were made. Where no tmpfs can be
mounted, those tests are skipped with the reason; the fault-injection tests below them run
everywhere.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import optuna
import pytest
from helpers.forked_cli import run_sweeper
from helpers.processes import with_tests_on_path
from helpers.trainers import fill_disk
from mlflow import MlflowClient
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from sweeper.cli import main
from sweeper.config.errors import NotWritten, disk_full, full_disk_line
from sweeper.records.mlflow_store import Outage, tracking_settings
from sweeper.records.recorder import MlflowRecorder
from sweeper.records.sender import Unsent
from sweeper.sweep.workers import kept_whole
from sweeper.trial.events import Reporter, StartEvent, TrialResult

FILL = "FULL_DISK_FILL"  # the file DiskFillingTrainer fills the disk with, during a trial's first epoch


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


SWEEP = ["sweep.trainer=helpers.trainers.DiskFillingTrainer", "train.epochs=2", "sweep.live=false", "sweep.poll=0.2",
         "sweep.workers=1", "sweep.cpu_threads=1", "sampler.seed=0", "pruner=none", "sweep.n_trials=2",
         "sweep.max_failures=1"]  # fmt: skip


def sweep(folder: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": with_tests_on_path(), **env}
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH", FILL):
        environment.pop(variable, None)
    environment.update(env)
    return run_sweeper(["sweep", *SWEEP, *overrides], folder, environment, timeout=280)


def finished_trials_without_records(mlflow_db: Path, study_db: Path) -> list[int]:
    """Trials the study holds as finished that MLflow holds no finished run with an objective for."""
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{study_db}")
    finished = {t.number for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    client = MlflowClient(f"sqlite:///{mlflow_db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    recorded = {
        int(r.data.tags["trial"]) for r in runs if "trial" in r.data.tags and r.info.status == "FINISHED" and "objective" in r.data.metrics
    }
    return sorted(finished - recorded)


@pytest.mark.slow
def test_a_full_mlflow_disk_keeps_the_records_until_the_same_command_sends_them(small_disk, tmp_path):
    """The MLflow store on a disk that fills mid-trial (the study and the workers' spool folder on
    another): the sweep says so in one line and exits 1, and the finished trials' records stay in
    the spool folder; once space returns, the same command (no trial left to run) sends them, and
    no finished trial lacks its records."""
    store = [f"tracking.uri=sqlite:///{small_disk}/mlflow.db", f"tracking.artifacts={small_disk}/mlartifacts"]
    full = sweep(tmp_path, *store, **{FILL: str(small_disk / "fill")})
    out = full.stdout + full.stderr
    assert full.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out
    said = [line for line in out.splitlines() if "could not be written: the disk is full" in line]
    assert said and all(line.count("disk is full") == 1 for line in said), out  # one line per thing
    lacking = finished_trials_without_records(small_disk / "mlflow.db", tmp_path / "results" / "studies.db")
    assert lacking and list((tmp_path / "results" / "sweeps" / "mlp-digits" / "records").rglob("*.jsonl"))  # kept, not lost

    (small_disk / "fill").unlink()  # space returns
    again = sweep(tmp_path, *store)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "MLflow lacks the records" not in again.stdout, again.stdout
    assert finished_trials_without_records(small_disk / "mlflow.db", tmp_path / "results" / "studies.db") == []


@pytest.mark.slow
def test_a_full_results_disk_stops_the_sweep_in_one_line_and_the_same_command_resumes(small_disk, tmp_path):
    """Everything on the disk that fills (study, MLflow store, logs, report): the worker stops
    with one line naming the study, the sweep says so and exits 1, without a traceback; with
    space back, the same command finishes the sweep with every finished trial recorded."""
    # the trial the stopped worker left running is failed by the heartbeat check on resume: soon here
    where = [f"results_dir={small_disk}", "storage.heartbeat_interval=1", "storage.grace_period=3", "sweep.max_failures=3"]
    full = sweep(tmp_path, *where, **{FILL: str(small_disk / "fill")})
    out = full.stdout + full.stderr
    assert full.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out
    assert "could not write the study mlp-digits" in out or "disk is full" in out, out

    (small_disk / "fill").unlink()
    again = sweep(tmp_path, *where)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "MLflow lacks the records" not in again.stdout, again.stdout
    assert finished_trials_without_records(small_disk / "mlflow.db", small_disk / "studies.db") == []


def test_a_report_on_a_full_disk_is_one_line_naming_it(small_disk, workdir, capsys):
    storage = f"sqlite:///{workdir}/studies.db"
    study = optuna.create_study(study_name="full", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"overrides": ["lr=fastai"], "status": "finished"}))
    fill_disk(small_disk / "fill")
    code = main(["report", "full", f"storage.url={storage}", "tracking=none", f"results_dir={small_disk}"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("sweeper report: error: could not write ") and "the disk is full" in err, err
    assert str(small_disk) in err, err  # names where


# --- fault injection: what each piece does with a full disk ------------------------------------


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "results/x"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full")), True),
        (RuntimeError('could not extend file "base/16384/2619": No space left on device'), True),  # PostgreSQL
        (OSError(errno.ENOENT, "No such file or directory"), False),
        (OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked")), False),
    ],
)
def test_a_full_disk_is_told_from_other_errors(error, full):
    assert disk_full(error) is full
    wrapped = NotWritten("the study")
    wrapped.__cause__ = error
    assert disk_full(wrapped) is full  # also as the cause of another error


def test_the_full_disk_line_names_the_file_else_the_store():
    assert full_disk_line(OSError(errno.ENOSPC, "No space left on device", "results/a.png")).startswith("could not write results/a.png: ")
    study = NotWritten("the study s in sqlite:///results/studies.db")
    study.__cause__ = OperationalError("UPDATE", {}, sqlite3.OperationalError("database or disk is full"))
    line = full_disk_line(study)
    assert line.startswith("could not write the study s in sqlite:///results/studies.db: the disk is full (")
    assert "\n" not in line


class _Unwritten(Reporter):
    def unwritten(self) -> str | None:
        return "its MLflow records (sqlite:///x)"


@pytest.mark.parametrize("status", ["finished", "pruned"])
def test_a_trial_whose_records_were_not_written_fails_instead_of_finishing(status, capsys):
    result = kept_whole(TrialResult(status, 0.9, "accuracy"), [Reporter(), _Unwritten()])
    assert result.status == "failed" and "its MLflow records (sqlite:///x) could not be written: the disk is full" in result.reason
    assert capsys.readouterr().out.startswith("sweeper: trial failed: ")  # the sweep's console shows it
    assert kept_whole(TrialResult(status, 0.9, "accuracy"), [Reporter()]).status == status


def recorder_whose_store_fails(error: Exception, monkeypatch) -> MlflowRecorder:
    from omegaconf import OmegaConf

    settings = tracking_settings(OmegaConf.create({"tracking": {"enabled": True, "uri": "sqlite:///x.db", "experiment": "e"}}))

    def fails(self, client, create_only=False):
        raise error

    monkeypatch.setattr(MlflowRecorder, "_send", fails)
    monkeypatch.setattr(Outage, "down", set())  # this store's outage is this test's alone
    monkeypatch.setattr("sweeper.records.recorder.mlflow_client", lambda uri: None)
    recorder = MlflowRecorder(settings, None, lambda client: ("0", None))
    recorder.on_start(StartEvent({}, (1e-3,), 1, 1, "cpu"))
    recorder.on_end(TrialResult("finished", 0.9, "accuracy"))
    return recorder


def test_a_recorder_whose_store_is_full_says_what_it_could_not_write(monkeypatch, workdir):
    full = OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    recorder = recorder_whose_store_fails(full, monkeypatch)
    assert recorder.unwritten().startswith("its MLflow records (sqlite:///") and recorder.unwritten().endswith("/x.db)")
    Unsent.recorders.remove(recorder)  # not sent at this process's exit


def test_a_recorder_whose_store_is_out_of_reach_keeps_its_records_for_later(monkeypatch, workdir):
    recorder = recorder_whose_store_fails(ConnectionError("connection refused"), monkeypatch)
    assert recorder.unwritten() is None  # kept and sent when the store is back: the trial finishes
    Unsent.recorders.remove(recorder)
