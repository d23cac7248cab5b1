"""Faults during a sweep, with nothing lost: a worker killed mid-trial, a trial that diverges, one
that raises, the sweep interrupted (Ctrl-C) and started again, the MLflow server gone for a while,
eight workers writing to the embedded stores at once.

Every test runs `sweeper sweep` as a real process and then reads both records back: the Optuna
study, and the MLflow store through MLflow's own client. Nothing lost means every finished trial
has exactly one MLflow run, nested under the sweep's run, holding every epoch's metrics (and,
with the real trainer, every training step's), equal to what Optuna was told.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers.forked_cli import ForkedProcess, popen
from helpers.processes import with_tests_on_path
from helpers.servers import MlflowServer
from helpers.waiting import wait_for_file, wait_until
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from sweeper.sweep.counts import count_trials

# Limits on waits are for hangs only: on a loaded machine a sweep may take minutes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Small sweeps on the stand-in trainer (tests/helpers/trainers.py): real worker processes and stores, trials
# of a known length. The first six trials cover every shape (sweep.cover). Seeded: each worker k
# draws with seed + k, the same points every time; which worker runs which trial is still a race,
# so no test here depends on the points drawn.
STAND_IN = ["sweep.poll=0.2", "sweep.live=false", "pruner=none", "train.epochs=3", "sweep.cpu_threads=1", "sampler.seed=0"]
# The real trainer, small: the digits in 11 batches an epoch. The tests that pace its trials run
# it behind the test's gates (helpers.gated_trainer.GatedTrainer, tests/ on PYTHONPATH).
REAL = [
    "data=digits", "train.batch_size=128", "train.epochs=2", "train.threads=1",
    "sweep.cpu_threads=1", "sweep.poll=0.2", "sweep.live=false", "pruner=none", "sampler.seed=0",
]  # fmt: skip
GATED = "sweep.trainer=helpers.gated_trainer.GatedTrainer"


_STARTED: list[ForkedProcess] = []


def start_sweep(tmp_path: Path, *overrides: str, env: dict | None = None) -> ForkedProcess:
    """`sweeper sweep` in its own process group (the group a terminal's Ctrl-C reaches), with
    SIGINT at its default, as in a terminal's foreground command, even where these tests run
    with it ignored (helpers.forked_cli: forked as Popen would start it, its output read by
    communicate())."""
    command = [sys.executable, "-m", "sweeper.cli", "sweep", *overrides]
    sweep = popen(command, tmp_path, {**os.environ, **(env or {})}, session=True)
    _STARTED.append(sweep)
    return sweep


@pytest.fixture(autouse=True)
def leave_no_sweep_behind():
    """A test that fails half way must not leave a sweep and its workers running."""
    yield
    while _STARTED:
        sweep = _STARTED.pop()
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait(30)


def finish(sweep: ForkedProcess, timeout: float = 600) -> tuple[int, str, str]:
    out, err = sweep.communicate(timeout=timeout)
    return sweep.returncode, out, err


def storage_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/results/studies.db"


def wait_for(sweep: ForkedProcess, storage: str, name: str, what: Callable[[list[FrozenTrial]], object], timeout: float = 300):
    """Poll the study until `what(trials)` is truthy; return it. The sweep must still be running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert sweep.poll() is None, sweep.communicate()
        found = None
        # Look at the study only once it exists, or this process would be one more creating the
        # storage's tables (workers start, and their logs appear, before it does).
        if study_exists(storage, name):
            found = what(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout}s in vain")


def study_exists(storage: str, name: str) -> bool:
    """Whether the SQLite storage holds the study, read without creating anything."""
    path = Path(storage.removeprefix("sqlite:///"))
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.OperationalError:  # its tables are not made yet, or it is being written
        return False


def finished(trials: list[FrozenTrial]) -> int:
    return sum(t.state in FINISHED for t in trials)


def check_nothing_lost(study: optuna.Study, tracking_uri: str, *, steps: bool = False) -> dict[int, object]:
    """Every finished trial has exactly one MLflow run under the sweep's run, with every epoch's
    objective equal to what Optuna was told (and every step's lr and loss, with `steps`).
    Returns the runs by trial number."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study.study_name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sweeper.kind` = 'sweep'")
    assert parent.info.status == "FINISHED"
    runs = defaultdict(list)
    for run in client.search_runs([experiment.experiment_id], "tags.`sweeper.kind` = 'trial'", max_results=1000):
        runs[int(run.data.tags["trial"])].append(run)
    done = [t for t in study.trials if t.state in FINISHED]
    assert done
    for trial in done:
        assert len(runs[trial.number]) == 1, (trial.number, len(runs[trial.number]))  # exactly once
        (run,) = runs[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        # A pruned trial ended as planned: FINISHED, its status tag says pruned.
        assert run.info.status == "FINISHED"
        assert run.data.tags["status"] == ("finished" if trial.state == TrialState.COMPLETE else "pruned")
        objective = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "objective"))
        assert objective == [(step - 1, value) for step, value in sorted(trial.intermediate_values.items())]
        for key in ("valid_accuracy", "valid_loss", "train_loss"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(objective), key
        if trial.state == TrialState.COMPLETE:
            assert objective[-1][1] == trial.value
        if steps:
            total = int(run.data.params["total_steps"])
            for key in ("lr_0", "lr_2", "loss"):
                assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(total)), key
    return {number: found for number, found in runs.items()}


# --- a worker killed, a trial that diverges, a trial that raises: one sweep -------------------


@pytest.fixture(scope="module")
def faulty_sweep(tmp_path_factory):
    """A two-worker sweep in which the constant shape raises, the triangular one diverges, and
    one worker is killed (SIGKILL) in the middle of a trial that would have finished."""
    tmp_path = tmp_path_factory.mktemp("faulty")
    gates = tmp_path / "gates"
    modules = tmp_path / "modules"
    modules.mkdir()
    env = {
        "PYTHONPATH": with_tests_on_path(),
        "STAND_IN_EPOCH_SECONDS": "0.1",
        "STAND_IN_RAISE_SHAPE": "Constant",
        "STAND_IN_DIVERGE_SHAPE": "Triangular",
        # The first trial past its first epoch (only healthy shapes get there) holds until its
        # worker is killed: the victim is mid-trial however slowly the test looks.
        "TRIAL_GATES": str(gates), "TRIAL_HOLD_AFTER": "0", "TRIAL_HOLD_MAX": "1",
        "STAND_IN_MODULES": str(modules),  # what each trial's process had loaded of MLflow
    }  # fmt: skip
    sweep = start_sweep(
        tmp_path, "sweep.trainer=helpers.trainers.StandInTrainer", *STAND_IN, "sweep.workers=2", "sweep.n_trials=8",
        # Random draws (seeded): the raising and diverging shapes come up again after the cover,
        # in an order that depends on which worker asks first, so no failure count may end it.
        "sampler=random", "sweep.max_failures=100", "sweep.compare=none",
        # A live trial beats every second; a heartbeat check would fail the killed worker's
        # trial only 10 minutes after the kill, past the test's limits: the sweep, which sees
        # the worker die, fails it and queues it again at once.
        "storage.heartbeat_interval=1", "storage.grace_period=600", env=env,
    )  # fmt: skip
    storage = storage_of(tmp_path)
    pid = wait_for_file(gates / "held-0", sweep)

    def held(trials):
        for t in trials:
            if t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{pid}"):
                return t

    victim = wait_for(sweep, storage, "mlp-digits", held)
    assert victim.user_attrs["epochs"] == 1 and victim.params["shape"] not in ("constant", "triangular")
    os.kill(int(pid), signal.SIGKILL)
    code, out, err = finish(sweep)
    assert code == 0, out[-3000:] + err[-3000:]
    study = optuna.load_study(study_name="mlp-digits", storage=storage)
    loaded = {path.name.split("-")[0]: json.loads(path.read_text()) for path in modules.iterdir()}
    return {"study": study, "victim": victim, "out": out, "tracking": f"sqlite:///{tmp_path}/results/mlflow.db", "loaded": loaded}


def test_a_killed_worker_s_trial_fails_at_once_and_runs_again(faulty_sweep):
    study, victim = faulty_sweep["study"], faulty_sweep["victim"]
    assert study.trials[victim.number].state == TrialState.FAIL  # the sweep saw its worker die
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params  # the same point, again
    assert count_trials(study).finished == 8 and count_trials(study).running == 0
    # the one failure its worker could not give a reason for: the sweep saw how the worker ended
    # and recorded that
    assert "failed 1x: its worker was killed by SIGKILL (out of memory?" in faulty_sweep["out"]


def test_the_killed_worker_s_run_keeps_what_it_recorded_and_is_ended(faulty_sweep):
    """Its records went through the machine's recorder: what it wrote before the kill is in MLflow."""
    study, victim = faulty_sweep["study"], faulty_sweep["victim"]
    client = MlflowClient(faulty_sweep["tracking"])
    experiment = client.get_experiment_by_name(study.study_name)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`sweeper.kind` = 'trial' and tags.trial = '{victim.number}'")
    assert run.info.status == "KILLED" and run.data.tags["status"] == "killed"  # no run left RUNNING
    recorded = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "objective")]
    assert recorded == [(0, study.trials[victim.number].intermediate_values[1])]  # its first epoch, as Optuna heard it


def test_one_process_on_the_machine_loads_mlflow_not_each_worker(faulty_sweep):
    """Several worker processes ran the trials, and the records of all of them are in MLflow (the
    tests above): sent by the sweep's process, while no worker loaded it."""
    loaded = faulty_sweep["loaded"]
    assert len(loaded) >= 2  # trials of several worker processes
    assert set(map(tuple, loaded.values())) == {()}


def test_a_trial_that_diverges_fails_alone_and_its_run_says_so(faulty_sweep):
    study = faulty_sweep["study"]
    runs = check_nothing_lost(study, faulty_sweep["tracking"])
    diverged = [t for t in study.trials if t.params.get("shape") == "triangular"]
    assert diverged and all(t.state == TrialState.FAIL for t in diverged)
    for trial in diverged:
        assert trial.user_attrs["reason"] == "loss became nan at epoch 0"
        (run,) = runs[trial.number]
        assert run.info.status == "FAILED" and run.data.tags["diverged"] == "true"


def test_a_trial_that_raises_fails_alone_with_its_reason(faulty_sweep):
    study = faulty_sweep["study"]
    raised = [t for t in study.trials if t.params.get("shape") == "constant"]
    assert raised and all(t.state == TrialState.FAIL for t in raised)
    assert {t.user_attrs["reason"] for t in raised} == {"RuntimeError: stand-in failure for Constant"}
    # the sweep went on around it: the other shapes finished
    shapes = {t.params["shape"] for t in study.trials if t.state in FINISHED}
    assert len(shapes) >= 2 and not shapes & {"constant", "triangular"}


def test_every_finished_trial_of_the_faulty_sweep_is_recorded_once(faulty_sweep):
    study = faulty_sweep["study"]
    runs = check_nothing_lost(study, faulty_sweep["tracking"])
    # a run for every trial that started training (finished, diverged, killed): the raising
    # shape fails before its trial starts
    assert set(runs) == {t.number for t in study.trials if t.params["shape"] != "constant"}


# --- Ctrl-C, then the same command again ------------------------------------------------------


def test_an_interrupted_sweep_resumes_to_exactly_n_trials(tmp_path, stand_in_sweep):
    trainer = stand_in_sweep[0]  # the stand-in, with MLflow on
    overrides = [trainer, *STAND_IN, "sweep.workers=2", "sweep.n_trials=6"]
    env = {"STAND_IN_EPOCH_SECONDS": "0.1"}
    # The first two trials finish; every later one holds after its first epoch until the worker
    # is asked to stop. Ctrl-C comes once both workers hold one: 2 finished and 2 mid-trial.
    gates = tmp_path / "gates"
    sweep = start_sweep(tmp_path, *overrides, env={**env, "TRIAL_GATES": str(gates), "TRIAL_HOLD_AFTER": "2"})
    wait_for_file(gates / "held-1", sweep)
    # Ctrl-C in a terminal reaches the whole foreground process group: the sweep and its workers.
    os.killpg(sweep.pid, signal.SIGINT)
    code, out, err = finish(sweep)
    assert code == 130, out[-3000:] + err[-3000:]
    assert "interrupted; run the same command again to resume it" in out
    study = optuna.load_study(study_name="mlp-digits", storage=storage_of(tmp_path))
    before = count_trials(study)
    # nothing left running: the two stopped mid-trial are failed, to run again
    assert (before.finished, before.failed, before.running) == (2, 2, 0)

    code, out, err = finish(start_sweep(tmp_path, *overrides, env=env))
    assert code == 0, out[-3000:] + err[-3000:]
    assert count_trials(study).finished == 6  # exactly n_trials, counted across both runs
    check_nothing_lost(study, f"sqlite:///{tmp_path}/results/mlflow.db")


# --- the MLflow server goes away and comes back -----------------------------------------------


def test_a_sweep_goes_on_while_the_mlflow_server_is_down_and_records_everything(tmp_path, empty_mlflow_store):
    server = MlflowServer(tmp_path / "server", store=empty_mlflow_store).start()
    name = "mlp-digits"
    gates = tmp_path / "gates"
    # Trials 0-1 (in the order they begin) run with the server up, 2-3 once it is down, 4-5
    # once it is back: each waits at its gate until the test has done what comes before.
    env = {
        "MLFLOW_TRACKING_URI": server.url, "PYTHONPATH": with_tests_on_path(),
        "TRIAL_GATES": str(gates), "TRIAL_WAIT_FOR": "2:down,4:up",
    }  # fmt: skip
    try:
        sweep = start_sweep(
            tmp_path, *REAL, GATED, "tracking=server", "sweep.workers=2", "sweep.n_trials=6", "tracking.request_timeout=2",
            "tracking.request_retries=0", env=env,
        )  # fmt: skip
        storage = storage_of(tmp_path)
        wait_for(sweep, storage, name, lambda trials: finished(trials) >= 2)
        server.stop()
        (gates / "down").touch()
        # Trials go on while it is down: two more finish, and the sweep says it is down once its
        # recorder has tried to send their records (on a busy machine, seconds after they end).
        wait_for(sweep, storage, name, lambda trials: finished(trials) >= 4)
        wait_until(lambda: "cannot be reached" in sweep.stderr.read_text(errors="replace"), "the outage said", sweep)
        server.start()  # back, on the same port and store
        (gates / "up").touch()
        code, out, err = finish(sweep)
        assert code == 0, out[-3000:] + err[-3000:]
        # said clearly, where the user looks: the sweep's process records for its workers
        assert "cannot be reached" in out + err and "Training goes on" in out + err, (out + err)[-3000:]
        study = optuna.load_study(study_name=name, storage=storage)
        assert count_trials(study).finished == 6
        check_nothing_lost(study, server.url, steps=True)  # what was recorded late is recorded
    finally:
        server.stop()


# --- eight workers, one embedded study and one embedded MLflow store --------------------------


@pytest.mark.timeout(1500)
def test_eight_workers_share_the_embedded_stores_without_a_lock_error(tmp_path):
    # Each trial waits until all eight have begun: eight workers, one trial each, all training
    # and writing to both stores at once, however slowly the workers start.
    env = {"PYTHONPATH": with_tests_on_path(), "TRIAL_GATES": str(tmp_path / "gates"), "TRIAL_BARRIER": "8"}
    sweep = start_sweep(tmp_path, *REAL, GATED, "sweep.workers=8", "sweep.n_trials=8", "train.epochs=1", env=env)
    code, out, err = finish(sweep, timeout=1200)  # about 5 minutes on 2 loaded cores
    assert code == 0, out[-3000:] + err[-3000:]
    logs = "".join(p.read_text() for p in (tmp_path / "results" / "sweeps" / "mlp-digits").glob("worker-*.log"))
    ran = [int(n) for n in re.findall(r"worker \d+: ran (\d+) trial", logs)]
    assert ran == [1] * 8  # every worker ended well, each with one of the eight trials
    for text in (out, err, logs):
        assert "database is locked" not in text
        assert "Traceback" not in text
    study = optuna.load_study(study_name="mlp-digits", storage=storage_of(tmp_path))
    counts = count_trials(study)
    assert counts.finished == 8 and counts.failed == 0
    assert len({t.user_attrs["worker"] for t in study.trials}) == 8
    check_nothing_lost(study, f"sqlite:///{tmp_path}/results/mlflow.db", steps=True)


# --- several processes opening a new embedded storage at the same moment ----------------------

OPEN_AT_ONCE = """
import os, sys, time
from pathlib import Path
import optuna
from helpers.waiting import flock_queue
from sweeper.sweep.storage import StorageSpec

url, folder, openers = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
create = optuna.storages.RDBStorage.__init__


def create_once_the_others_wait(self, *args, **kwargs):
    # Where the storage's tables are made, under its lock. Another opener already here means the
    # lock let two in; otherwise wait until every opener not yet done is queued on the lock (the
    # kernel says so), so that they all open at once.
    inside = folder / f"inside-{os.getpid()}"
    inside.touch()
    if [other for other in folder.glob("inside-*") if other != inside]:
        (folder / f"overlap-{os.getpid()}").touch()
    deadline = time.monotonic() + 300
    while flock_queue() < openers - 1 - len(list(folder.glob("done-*"))) and not list(folder.glob("overlap-*")):
        if time.monotonic() > deadline:
            sys.exit("waited 300 s in vain for the other openers to queue on the storage lock")
        time.sleep(0.01)
    try:
        create(self, *args, **kwargs)
    finally:
        inside.unlink()
        (folder / f"done-{os.getpid()}").touch()


optuna.storages.RDBStorage.__init__ = create_once_the_others_wait
StorageSpec(url).open()
"""


def test_processes_that_open_a_new_embedded_storage_at_once_all_get_it(tmp_path):
    # Two `sweeper sweep` (or a sweep and a joining worker) started together on a fresh results/:
    # each creates the storage's tables, and without a lock one of them fails half way. Here the
    # first opener in waits until the other three are queued on the lock, so all four open at
    # once, however slowly they start; one that finds another inside shows the lock failed.
    url = f"sqlite:///{tmp_path}/results/studies.db"
    folder = tmp_path / "openers"
    folder.mkdir()
    command = [sys.executable, "-c", OPEN_AT_ONCE, url, str(folder), "4"]
    env = {**os.environ, "PYTHONPATH": with_tests_on_path()}
    openers = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    errors = [opener.communicate(timeout=600)[1] for opener in openers]
    assert [opener.returncode for opener in openers] == [0] * 4, "\n".join(e[-500:] for e in errors)
    assert len(list(folder.glob("done-*"))) == 4
    assert not list(folder.glob("overlap-*"))  # one at a time
    assert optuna.get_all_study_names(url) == []  # one working storage, tables and all
