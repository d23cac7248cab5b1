"""Nothing left half-made: the two stores agree on what a sweep is, and a sweep that lost
anything says what and exits non-zero, with no run left RUNNING.

Real `sweeper sweep` processes on the stand-in trainer (tests/helpers/trainers.py) with the embedded stores,
read back with Optuna and MLflow's own client:
- a study storage emptied or replaced under an MLflow store that holds the sweep is refused, and
  so is an MLflow store that lacks the run the study recorded; damaged stores get one line that
  says so (not advice about servers), and nothing in either store changes;
- a worker killed mid-trial leaves its MLflow run RUNNING: the sweep ends it (KILLED) and says so;
- a report that cannot be written: the sweep says so, exits 1, and its run is ended anyway;
- finished trials that MLflow holds no run for are named (the audit itself, on a real store);
- two identical sweeps started together in a fresh folder make one study and one parent run.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers.forked_cli import popen, run_sweeper
from helpers.played import feed_trial
from helpers.processes import with_tests_on_path
from helpers.waiting import wait_for_file, wait_until
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.records.audit import audit_records
from sweeper.records.run_record import plain_config
from sweeper.records.tracking import prepare_sweep

pytestmark = pytest.mark.slow

SMALL = ["sweep.trainer=helpers.trainers.StandInTrainer", "sweep.n_trials=2", "train.epochs=2", "sweep.live=false",
         "sweep.poll=0.2", "sweep.workers=1", "sweep.cpu_threads=1", "sampler.seed=0", "pruner=none"]  # fmt: skip


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": with_tests_on_path(), **extra}
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        env.pop(variable, None)
    return env


def sweep(folder: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    return run_sweeper(["sweep", *SMALL, *overrides], folder, environment(**env), timeout=240)


def mlflow_state(folder: Path) -> list[tuple[str, str, str]]:
    client = MlflowClient(f"sqlite:///{folder}/results/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return sorted((r.info.run_id, r.info.status, r.info.run_name) for r in client.search_runs(experiments, max_results=1000))


def one_line_refusal(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-trial sweep (mlp-digits) with its study and MLflow store."""
    folder = tmp_path_factory.mktemp("finished")
    done = sweep(folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def copy_of(folder: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-a", f"{folder}/results", f"{tmp_path}/results"], check=True)
    return tmp_path


def test_an_emptied_study_storage_is_refused(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    before = mlflow_state(folder)
    (folder / "results" / "studies.db").write_bytes(b"")  # emptied
    line = one_line_refusal(sweep(folder), "storage.url", "no study of that name", "sweep.name=")
    assert "server" not in line
    assert mlflow_state(folder) == before  # the finished parent run was not flipped to RUNNING
    assert optuna.get_all_study_names(f"sqlite:///{folder}/results/studies.db") == []


def test_a_refusal_after_the_workers_went_takes_back_what_they_made(finished, tmp_path):
    """A new sweep (its study and folder new) lets its workers go before MLflow is asked; when
    MLflow then refuses it (here: its store holds a sweep of that name, with trial runs, whose
    study is gone), the workers are stopped and the study and the folder removed: as little is
    left as by a refusal before the workers."""
    folder = copy_of(finished, tmp_path)
    (folder / "results" / "studies.db").unlink()
    subprocess.run(["rm", "-r", f"{folder}/results/sweeps"], check=True)
    before = mlflow_state(folder)
    one_line_refusal(sweep(folder, "sweep.workers=2"), "storage.url", "no study of that name", "sweep.name=")
    assert mlflow_state(folder) == before
    assert optuna.get_all_study_names(f"sqlite:///{folder}/results/studies.db") == []
    assert not (folder / "results" / "sweeps").exists() or not any((folder / "results" / "sweeps").iterdir())


def test_a_new_sweeps_workers_go_before_its_mlflow_run_is_made(tmp_path, monkeypatch):
    """The sweep's MLflow run is made while the first trials run: here the sweep waits, before
    it makes the run, for a trial to have begun; were the workers held until the run existed,
    no trial would begin and the wait would fail."""
    from sweeper.cli import main
    from sweeper.commands import sweeping as sweep_command

    gates = tmp_path / "gates"
    made = sweep_command.prepare_sweep

    def after_a_trial_began(*args, **kwargs):
        wait_for_file(gates / "ticket-0", timeout=240)
        return made(*args, **kwargs)

    monkeypatch.setattr(sweep_command, "prepare_sweep", after_a_trial_began)
    monkeypatch.chdir(tmp_path)
    for variable, value in environment(TRIAL_GATES=str(gates)).items():
        monkeypatch.setenv(variable, value)
    assert main(["sweep", *SMALL]) == 0
    (parent,) = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("sweeper.kind") == "sweep"]
    trials = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("sweeper.kind") != "sweep"]
    assert parent.info.status == "FINISHED" and len(trials) == 2
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in trials)  # filed under it all the same


def test_a_replaced_mlflow_store_is_refused(finished, tmp_path):
    folder = copy_of(finished, tmp_path)
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{folder}/results/studies.db")
    trials = len(study.trials)
    (folder / "results" / "mlflow.db").unlink()
    one_line_refusal(sweep(folder, "sweep.n_trials=3"), "tracking.uri", "no MLflow store")
    assert not (folder / "results" / "mlflow.db").exists()  # none made
    assert len(optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{folder}/results/studies.db").trials) == trials


@pytest.mark.parametrize("store", ["studies.db", "mlflow.db"])
def test_a_damaged_store_gets_one_line_that_says_so(finished, tmp_path, store):
    folder = copy_of(finished, tmp_path)
    damaged = folder / "results" / store
    damaged.write_bytes(b"not a database " * 1000)
    other = folder / "results" / ("mlflow.db" if store == "studies.db" else "studies.db")
    before = other.read_bytes()
    # One trial more to run: the sweep opens both stores (a finished sweep says so before either).
    line = one_line_refusal(sweep(folder, "sweep.n_trials=3"), "aside to start afresh")
    assert "server" not in line and "password" not in line
    assert damaged.read_bytes() == b"not a database " * 1000 and other.read_bytes() == before  # nothing changed


def test_a_killed_workers_run_is_ended_and_the_sweep_says_so(tmp_path):
    # One trial holds after its first epoch (its MLflow run exists, RUNNING) and writes its
    # worker's pid to gates/held-0; the test kills that worker there (helpers.gates.Gates).
    gates = tmp_path / "gates"
    started = popen(
        [sys.executable, "-m", "sweeper.cli", "sweep", *SMALL, "sweep.workers=2", "storage.heartbeat_interval=1",
         "storage.grace_period=3"],
        tmp_path, environment(TRIAL_GATES=str(gates), TRIAL_HOLD_AFTER="0", TRIAL_HOLD_MAX="1"), session=True,
    )  # fmt: skip
    try:
        pid = int(wait_for_file(gates / "held-0", started))
        # the sweep's recorder replays the worker's records into MLflow as they come: wait for its run
        (victim_run,) = wait_until(
            lambda: [r for r in mlflow_runs(tmp_path) if r.info.status == "RUNNING" and r.data.tags.get("worker", "").endswith(f":{pid}")],
            "the held trial's run in MLflow",
            started,
        )
        os.kill(pid, signal.SIGKILL)
        out, err = started.communicate(timeout=240)
    finally:
        if started.poll() is None:
            os.killpg(started.pid, signal.SIGKILL)
    # The sweep failed the dead worker's trial and queued it again, the other worker ran it; the
    # sweep ended its run.
    assert "records: ended 1 run(s) left running by stopped workers" in out, out + err
    runs = mlflow_runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]  # nothing left RUNNING
    (ended,) = [r for r in runs if r.info.run_id == victim_run.info.run_id]
    assert ended.info.status == "KILLED" and ended.data.tags["status"] == "killed"


def mlflow_runs(folder: Path) -> list:
    store = folder / "results" / "mlflow.db"
    if not store.exists():
        return []
    # A new sweep's store may be being made (its schema migrated) as its first trials run: read
    # it under the lock sweeper's processes make it under.
    with open(f"{store}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(f"sqlite:///{store}")
        experiment = client.get_experiment_by_name("mlp-digits")
        return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def test_a_report_that_cannot_be_written_fails_the_sweep_and_ends_its_run(tmp_path):
    (tmp_path / "results" / "sweeps" / "mlp-digits" / "report.md").mkdir(parents=True)  # not writable as a file
    done = sweep(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "report: not written (IsADirectoryError" in done.stdout and "Traceback" not in done.stderr
    (parent,) = [r for r in mlflow_runs(tmp_path) if r.data.tags.get("sweeper.kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    assert not [r for r in mlflow_runs(tmp_path) if r.info.status == "RUNNING"]


def test_the_audit_names_finished_trials_without_records(tracked_config):
    cfg = tracked_config()
    tracking = prepare_sweep(cfg, "audited")
    study = optuna.create_study(study_name="audited", direction="maximize")
    distribution = {"lr.high": FloatDistribution(1e-4, 1e-2)}
    for number in range(3):
        if number != 1:  # trial 1's records never reached MLflow
            feed_trial(tracking.trial_reporter(cfg, trial_number=number), plain_config(cfg), seed=number)
        study.add_trial(create_trial(params={"lr.high": 1e-3}, distributions=distribution, value=0.5, state=TrialState.COMPLETE))
    audit = audit_records(tracking, study)
    assert audit.lost == [1] and not audit.complete
    assert "finished trial(s) 1" in " ".join(audit.lines())


def test_the_audit_leaves_the_trials_another_commands_recorder_is_sending(tracked_config, tmp_path):
    """Two sweep commands of one sweep on one machine: the first to end must not judge a trial
    whose records the other's recorder is still sending (it ended that run KILLED and said its
    records were lost). Its spool file says so while that recorder holds the folder."""
    import fcntl

    from sweeper.records.spool import RECORDER_LOCK, spool_folder

    cfg = tracked_config()
    tracking = prepare_sweep(cfg, "shared")
    client = MlflowClient(tracking.settings.uri)
    run = client.create_run(tracking.experiment_id, tags={"sweep": "shared", "sweeper.kind": "trial", "trial": "0"})
    study = optuna.create_study(study_name="shared", direction="maximize")
    study.add_trial(create_trial(params={"lr.high": 1e-3}, distributions={"lr.high": FloatDistribution(1e-4, 1e-2)}, value=0.5))
    spool = spool_folder(tmp_path / "sweep")
    spool.mkdir(parents=True)
    (spool / "4242-0-0123abcd.jsonl").write_text("")  # trial 0's records, not all sent yet
    other = os.open(spool / RECORDER_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # the other command's recorder
    audit = audit_records(tracking, study, spool)
    assert audit.complete and not audit.closed
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    os.close(other)  # that recorder gone, and the file still there: the run is judged
    audit = audit_records(tracking, study, spool)
    assert audit.lost == [0] and len(audit.closed) == 1
    assert client.get_run(run.info.run_id).info.status == "KILLED"


def test_two_sweeps_started_together_make_one_study_and_one_parent_run(tmp_path):
    command = [sys.executable, "-m", "sweeper.cli", "sweep", *SMALL, "sweep.n_trials=4"]
    both = [popen(command, tmp_path, environment()) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in both]
    for process, (out, err) in zip(both, outputs):
        assert process.returncode == 0, out[-2000:] + err[-3000:]
    runs = mlflow_runs(tmp_path)
    assert len([r for r in runs if r.data.tags.get("sweeper.kind") == "sweep"]) == 1
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{tmp_path}/results/studies.db")
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 4  # exactly n_trials across both
    trial_runs = [r for r in runs if r.data.tags.get("sweeper.kind") == "trial"]
    assert sorted(int(r.data.tags["trial"]) for r in trial_runs) == sorted(t.number for t in study.trials)


@pytest.mark.parametrize("made_by", ["migrations", "kept schema"])
def test_a_command_stopped_while_it_makes_a_new_store_leaves_none_and_the_next_makes_it(made_by, tmp_path, monkeypatch):
    """A new sweep makes its embedded MLflow store beside its first trials; a Ctrl-C in the middle
    of MLflow's schema migrations left a half-made store, which the resume then refused as
    damaged. The store is made beside its place and moved there whole, whether MLflow's
    migrations make it or the package's SQL of its schema (sweeper.records.mlflow_schema)."""
    import mlflow.store.db.utils as db_utils
    from omegaconf import OmegaConf

    from sweeper.records import mlflow_schema, mlflow_store
    from sweeper.records.mlflow_store import connect, tracking_settings

    store = tmp_path / "results" / "mlflow.db"
    settings = tracking_settings(OmegaConf.create({"tracking": {"enabled": True, "uri": f"sqlite:///{store}", "experiment": "e"}}))
    with monkeypatch.context() as stopping:
        if made_by == "migrations":
            stopping.setattr(mlflow_schema, "SCHEMAS", tmp_path / "no-kept-schemas")

            def ctrl_c_half_way(engine):  # the first tables are made, the migrations not yet run
                raise KeyboardInterrupt

            stopping.setattr(db_utils, "_upgrade_db", ctrl_c_half_way)
        else:
            from make_mlflow_schema import migrated_store_sql

            kept = tmp_path / "kept-schemas"  # this MLflow's, whichever it is
            kept.mkdir()
            (kept / f"{mlflow_schema.head_revision()}.sql").write_text(migrated_store_sql())
            stopping.setattr(mlflow_schema, "SCHEMAS", kept)
            write_schema = mlflow_store.write_schema

            def ctrl_c_half_way(path):  # the schema written, MLflow not yet told
                assert write_schema(path)
                raise KeyboardInterrupt

            stopping.setattr(mlflow_store, "write_schema", ctrl_c_half_way)
        with pytest.raises(KeyboardInterrupt):
            connect(settings)
    assert sorted(p.name for p in store.parent.iterdir()) == ["mlflow.db.lock"]  # no store, no half-made file
    for killed in (".mlflow.db.0a1b.partial", ".mlflow.db.0a1b.partial-journal"):  # what a kill -9 half way leaves
        (store.parent / killed).write_bytes(b"half made")
    client, experiment = connect(settings)  # the next command makes it whole
    assert client.get_experiment(experiment).name == "e"
    assert sorted(p.name for p in store.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert store.stat().st_mode & 0o777 == 0o666 & ~umask  # as SQLite makes a file, not a temporary file's 0o600
