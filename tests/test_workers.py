"""Workers: device slots, the ask -> train -> tell loop, failures, launchers.

The trainer is the stand-in of tests/helpers/trainers.py (fast and deterministic), so these tests are about
the workers alone; tests/test_sweep_e2e.py runs the real trainer, tests/test_faults.py kills workers.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import optuna
import pytest
from helpers.trainers import StandInTrainer
from helpers.waiting import flock_queue
from optuna.trial import TrialState
from rich.console import Console

from sweeper.config import ConfigError, check_values
from sweeper.sweep import workers
from sweeper.sweep.counts import Counts, Move, count_trials
from sweeper.sweep.live import LiveView, read_status
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.storage import StorageSpec
from sweeper.sweep.study import open_study
from sweeper.sweep.workers import Slot, plan_slots, run_worker, visible_gpus

SWEEP = {"workers": "auto", "workers_per_device": 1, "cpu_threads": "auto"}


@pytest.mark.parametrize(
    ("settings", "gpus", "cores", "expected"),
    [
        ({}, ["0", "1"], 16, [Slot(0, "0", 8), Slot(1, "1", 8)]),  # one worker per GPU, cores shared
        ({"workers_per_device": 2}, ["3"], 16, [Slot(0, "3", 8), Slot(1, "3", 8)]),
        ({"workers": 3}, ["0", "1"], 16, [Slot(0, "0", 5), Slot(1, "1", 5), Slot(2, "0", 5)]),
        ({"cpu_threads": 2}, ["0"], 16, [Slot(0, "0", 2)]),
        ({}, [], 2, [Slot(0, threads=1), Slot(1, threads=1)]),  # no GPU: a worker per core
        ({}, [], 64, [Slot(i, threads=8) for i in range(8)]),  # at most 8, the cores shared out
        ({"workers": 2}, [], 16, [Slot(0, threads=8), Slot(1, threads=8)]),
        ({"cpu_threads": 4}, [], 16, [Slot(i, threads=4) for i in range(4)]),
        ({"workers": 3, "cpu_threads": 2}, [], 2, [Slot(i, threads=2) for i in range(3)]),
    ],
)
def test_slots_for_the_machine(settings, gpus, cores, expected):
    assert plan_slots({**SWEEP, **settings}, gpus, cores) == expected


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"workers": 0}, "sweep.workers"),
        ({"workers_per_device": 0}, "sweep.workers_per_device"),
        ({"cpu_threads": "many"}, "sweep.cpu_threads"),
    ],
)
def test_bad_slot_settings(settings, fragment):
    """Refused with the config (sweeper.config.values), before any slot is planned."""
    with pytest.raises(ConfigError, match=fragment):
        check_values({"sweep": {**SWEEP, **settings}})


@pytest.mark.parametrize(
    ("variable", "expected"),
    [("0,2", ["0", "2"]), ("GPU-8f1c,GPU-77aa", ["GPU-8f1c", "GPU-77aa"]), ("", []), ("-1", [])],
)
def test_visible_gpus_respect_cuda_visible_devices(variable, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": variable}) == expected


def test_counting_gpus_does_not_import_torch_in_the_sweep_process():
    """The sweep's process plans and watches; torch costs it a second or more to import."""
    code = "import sys; from sweeper.sweep.workers import visible_gpus; visible_gpus({}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_slot_environment_picks_the_device_before_torch_starts():
    assert Slot(0, gpu="2", threads=4).env() == {"CUDA_VISIBLE_DEVICES": "2", "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert Slot(1, threads=3).env() == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


@pytest.fixture
def plan_args(tmp_path, stand_in_sweep):
    return [f"results_dir={tmp_path}", *stand_in_sweep, "sweep.poll=0.2"]


def test_worker_runs_exactly_n_trials_and_failures_stay_alone(plan_args, monkeypatch):
    monkeypatch.setenv("STAND_IN_RAISE_SHAPE", "Constant")
    monkeypatch.setenv("STAND_IN_DIVERGE_SHAPE", "Triangular")
    # One worker and a seeded sampler: the same trials every time. The failing shapes may be drawn
    # again after the cover; no failure count may end the sweep before its 8 (not this test's point).
    overrides = ["sweep.n_trials=8", "pruner=none", "sampler.seed=0", "sweep.max_failures=100"]
    plan = plan_sweep([*plan_args, *overrides], validate=False)
    study = open_study(plan, create=True)  # its first trials cover every shape, constant included
    ran = run_worker(plan, train=StandInTrainer.train)
    counts = count_trials(study)
    assert counts.finished == 8 and counts.running == 0
    assert ran == counts.finished + counts.failed  # failed trials were replaced, not counted
    reasons = {t.params["shape"]: t.user_attrs["reason"] for t in study.trials if t.state == TrialState.FAIL}
    assert reasons["constant"] == "RuntimeError: stand-in failure for Constant"
    assert reasons["triangular"] == "loss became nan at epoch 0"
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(t.user_attrs["overrides"][: len(plan.overrides)] == list(plan.overrides) for t in finished)


def test_a_worker_whose_every_trial_fails_stops_at_max_failures_and_a_resume_starts_afresh(plan_args, monkeypatch, capsys):
    monkeypatch.setenv("STAND_IN_RAISE_SHAPE", "FastaiOneCycle")  # the only shape of search=slices
    plan = plan_sweep([*plan_args, "search=slices", "sweep.n_trials=4", "sweep.max_failures=3"], validate=False)
    study = open_study(plan, create=True)
    assert run_worker(plan, train=StandInTrainer.train) == 3  # not for ever
    assert count_trials(study) == Counts(failed=3)
    assert "worker 0: stopped: 3 trials failed since it started (sweep.max_failures=3)" in capsys.readouterr().out
    # The same sweep again (its cause fixed, or not): failures count from the new start.
    assert run_worker(plan, train=StandInTrainer.train) == 3
    assert count_trials(study) == Counts(failed=6)


def test_a_sweep_without_a_pruner_never_asks_one(plan_args, monkeypatch):
    def should_prune(trial):
        raise AssertionError("should_prune was asked under pruner=none")

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", should_prune)
    plan = plan_sweep([*plan_args, "sweep.n_trials=2", "pruner=none"], validate=False)
    study = open_study(plan, create=True)
    run_worker(plan, train=StandInTrainer.train)
    assert count_trials(study) == Counts(complete=2)  # each reported every epoch all the same
    assert all(len(t.intermediate_values) == 6 for t in study.trials)


def test_racing_workers_never_overshoot_n_trials(plan_args, monkeypatch):
    # Hold the gap between "count the trials" and "start one" open until every other worker is
    # queued on the claim lock (the kernel's list of waiters says so): without the lock they would
    # all count the same free slot, and here they would be seen inside the gap together.
    decide = workers.next_move
    inside, together = set(), []
    guard = threading.Lock()

    def decision_held_open(*args):
        move = decide(*args)
        if move != Move.RUN:
            return move
        me = threading.get_ident()
        with guard:
            together.extend([me] if inside else [])
            inside.add(me)
        deadline = time.monotonic() + 120
        while not together and flock_queue() < sum(r.is_alive() for r in racers) - 1:
            assert time.monotonic() < deadline, "the other workers neither queued on the claim lock nor came in"
            time.sleep(0.01)
        with guard:
            inside.discard(me)
        return move

    monkeypatch.setattr(workers, "next_move", decision_held_open)
    # The racers are threads standing in for worker processes. Hydra composes through one global
    # per process, so two threads composing a trial's config at once clash (a trial fails with
    # "GlobalHydra is already initialized"); let them compose one at a time, as processes can.
    compose, composing = workers.compose_config, threading.Lock()

    def compose_alone(*args, **kwargs):
        with composing:
            return compose(*args, **kwargs)

    monkeypatch.setattr(workers, "compose_config", compose_alone)
    plan = plan_sweep([*plan_args, "sweep.n_trials=4", "pruner=none", "sweep.cover=false"], validate=False)
    study = open_study(plan, create=True)
    racers = [threading.Thread(target=run_worker, args=(plan,), kwargs={"index": i, "train": StandInTrainer.train}) for i in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(300)
    assert not any(racer.is_alive() for racer in racers)
    assert together == []  # never two workers between their count and their trial's start
    assert count_trials(study) == Counts(complete=4)


def test_worker_stops_at_the_deadline(plan_args):
    plan = plan_sweep([*plan_args, "sweep.n_trials=50"], validate=False)
    open_study(plan, create=True)
    assert run_worker(plan, train=StandInTrainer.train, deadline=time.time() - 1) == 0


def test_multi_objective_sweep_reports_without_pruning(plan_args):
    plan = plan_sweep(
        [*plan_args, "sweep.n_trials=5", "sampler=nsgaii", "sweep.objectives={accuracy: maximize, loss: minimize}"],
        validate=False,
    )
    study = open_study(plan, create=True)
    run_worker(plan, train=StandInTrainer.train)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 5  # nothing pruned: Optuna cannot prune several objectives
    assert all(len(t.values) == 2 and t.intermediate_values == {} for t in complete)


@pytest.mark.slow
@pytest.mark.timeout(900)  # two sweeps' limits: only a hang comes near it
def test_parallel_workers_end_at_exactly_n_trials_each_on_its_gpu_and_resume(sweeper_cli, stand_in_sweep, tmp_path, monkeypatch):
    # Instant trials and three workers racing for the last ones: only the claim lock keeps the
    # count exact. Two GPUs are "visible": the stand-in reports the CUDA_VISIBLE_DEVICES it got.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    # The first three trials wait until all three have begun: every worker takes part, however
    # late it starts (helpers.gates.Gates).
    monkeypatch.setenv("TRIAL_GATES", str(tmp_path / "gates"))
    monkeypatch.setenv("TRIAL_BARRIER", "3")
    done = sweeper_cli("sweep", *stand_in_sweep, "sweep.workers=3", "sweep.n_trials=10", "sweep.poll=0.1")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{tmp_path}/results/studies.db")
    counts = count_trials(study)
    assert counts.finished == 10 and counts.running == counts.waiting == counts.failed == 0
    devices = {}
    for trial in study.trials:
        devices.setdefault(trial.user_attrs["worker"], set()).add(trial.user_attrs["device"])
    assert len(devices) == 3  # all three workers took part
    assert sorted(d for seen in devices.values() for d in seen) == ["3", "3", "5"]  # one GPU each, round-robin
    assert "sweep mlp-digits: 10/10 finished" in done.stdout
    assert "worker logs:" in done.stdout
    assert (tmp_path / "results" / "sweeps" / "mlp-digits" / "report.md").is_file()  # the comparison

    # The same sweep again, with a larger budget, resumes it: n_trials counts across runs.
    resumed = sweeper_cli("sweep", *stand_in_sweep, "sweep.workers=2", "sweep.n_trials=13", "sweep.poll=0.1")
    assert resumed.returncode == 0, resumed.stderr
    counts = count_trials(study)
    assert counts.finished == 13 and counts.running == counts.failed == 0


@pytest.mark.slow
@pytest.mark.timeout(900)  # beyond the sweep's own limit
def test_slurm_launcher_runs_workers_as_submitit_jobs(sweeper_cli, stand_in_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIAL_GATES", str(tmp_path / "gates"))
    monkeypatch.setenv("TRIAL_BARRIER", "2")  # both jobs' workers take part, however late one starts
    done = sweeper_cli(
        "sweep", *stand_in_sweep, "launcher=slurm", "launcher.cluster=local",
        "launcher.jobs=2", "launcher.gpus_per_node=0", "sweep.n_trials=6", "sweep.poll=0.2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{tmp_path}/results/studies.db")
    assert count_trials(study).finished == 6
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # two jobs, two worker processes
    jobs = tmp_path / "results" / "slurm" / "mlp-digits"
    assert list(jobs.glob("*_log.out"))  # submitit's job logs
    # The command line (which may hold a password) reached the jobs through their environment,
    # not through the pickles submitit keeps under results/.
    pickles = list(jobs.glob("*.pkl"))
    assert pickles and not any(b"sweep.n_trials=6" in p.read_bytes() for p in pickles)


@pytest.mark.slow
@pytest.mark.timeout(900)  # beyond the sweep's own limit
@pytest.mark.parametrize("tracking", ["none", "local"])  # local: the workers may fail their trials while MLflow loads
def test_a_sweep_whose_every_trial_fails_ends_and_says_why(sweeper_cli, stand_in_sweep, monkeypatch, tracking):
    monkeypatch.setenv("STAND_IN_RAISE_SHAPE", "FastaiOneCycle")
    overrides = [*(o for o in stand_in_sweep if not o.startswith("tracking=")), f"tracking={tracking}"]
    done = sweeper_cli("sweep", *overrides, "search=slices", "sweep.workers=2", "sweep.n_trials=3", "sweep.poll=0.1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0/3 finished (0 complete, 0 pruned), " in done.stdout
    assert "x: RuntimeError: stand-in failure for FastaiOneCycle" in done.stdout
    assert "trials failed in this run (sweep.max_failures=3); fix the cause" in done.stdout


@pytest.mark.slow
def test_bad_input_exits_2_and_creates_no_study(sweeper_cli, stand_in_sweep, tmp_path):
    done = sweeper_cli("sweep", *stand_in_sweep, "search.lr.strategies=[steep]")
    assert done.returncode == 2
    assert done.stderr.startswith("sweeper sweep: error: search.lr.strategies")
    assert not (tmp_path / "results").exists()
    joined = sweeper_cli("worker", *stand_in_sweep)
    assert joined.returncode == 2 and "start it with `sweeper sweep`" in joined.stderr


def test_live_view_shows_counts_best_and_running_trials(plan_args):
    plan = plan_sweep([*plan_args, "sweep.n_trials=3", "pruner=none", "storage.heartbeat_interval=null"], validate=False)
    study = open_study(plan, create=True)
    run_worker(plan, train=StandInTrainer.train)
    running = study.ask()
    running.set_user_attr("worker", "host:42")
    running.report(0.5, 1)
    console = Console(record=True, width=160)
    with LiveView("sweep test", enabled=True, console=console) as view:
        view.show(read_status(study, plan))
    shown = console.export_text()
    assert "3/3 finished (3 complete, 0 pruned), 0 failed, 1 running" in shown
    best = max(t.value for t in study.trials if t.value is not None)
    assert f"best accuracy {best:.4g}" in shown
    assert "host:42" in shown and "0.5" in shown  # the running trial, its worker and last report


class ExitsAfter:
    """A worker handle that reports running for `polls` looks, then exit code 0."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def poll(self) -> int | None:
        self.polls -= 1
        return None if self.polls >= 0 else 0


def test_the_sweep_sees_its_last_worker_exit_without_waiting_out_the_poll(monkeypatch):
    from sweeper.commands import sweeping

    slept = []
    monkeypatch.setattr(sweeping.time, "sleep", slept.append)
    sweeping._wait_for_exit([ExitsAfter(1), ExitsAfter(3)], seconds=30)
    assert 0 < sum(slept) < 1  # woke at the exit, not after 30 s
    slept.clear()
    sweeping._wait_for_exit([ExitsAfter(0)], seconds=30)
    assert slept == []


def test_a_waiting_worker_wakes_when_its_studys_file_changes(tmp_path):
    """A worker that waits for the last running trials looks at the embedded study's file and
    stops waiting once it is no longer as it was counted (a trial ended), not sweep.poll later:
    the sweep ends with its last worker. A change before the wait began counts too."""
    study_file = tmp_path / "studies.db"
    study_file.write_bytes(b"as counted")
    storage = StorageSpec(f"sqlite:///{study_file}")
    counted = storage.file_state()
    waiting = threading.Thread(target=workers._sleep_until_changed, args=(storage, 600.0, counted), daemon=True)
    waiting.start()
    with open(study_file, "ab") as study:
        study.write(b", a trial told")
    waiting.join(120)  # it wakes within a look (CHANGE_LOOK_SECONDS); 600 s if it slept on
    assert not waiting.is_alive()
    began = time.monotonic()
    workers._sleep_until_changed(storage, 600.0, counted)  # changed already: no sleep at all
    assert time.monotonic() - began < 300


def test_a_trial_that_ends_between_a_waiting_workers_count_and_its_wait_wakes_it_at_once(plan_args, monkeypatch):
    """The last trial may end just after a worker counted it running, before the worker begins
    to wait for it: the worker compares the study's file with the file it counted, so it stops
    then, not sweep.poll (600 s here) later."""
    plan = plan_sweep([*plan_args, "sweep.n_trials=1", "sweep.poll=600"], validate=False)
    study = open_study(plan, create=True)
    others = study.ask()  # another worker's trial, running: this worker counts it and waits
    look_for_stale = workers.fail_stale_trials

    def the_trial_ends_meanwhile(study):  # what wait() does between the count and the sleep
        if others.number not in {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}:
            optuna.load_study(study_name=plan.name, storage=plan.storage.url).tell(others.number, 0.5)
        look_for_stale(study)

    monkeypatch.setattr(workers, "fail_stale_trials", the_trial_ends_meanwhile)
    worker = threading.Thread(target=run_worker, args=(plan,), kwargs={"train": StandInTrainer.train}, daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive()
    assert count_trials(study) == Counts(complete=1)


@pytest.mark.parametrize("has_file", [True, False])
def test_a_waiting_worker_sleeps_its_poll_when_nothing_changes(tmp_path, has_file):
    study_file = tmp_path / "studies.db"
    study_file.write_bytes(b"as it is")
    began = time.monotonic()
    storage = StorageSpec(f"sqlite:///{study_file}" if has_file else "postgresql://sweeper@127.0.0.1/sweeper")  # a server's: no file
    workers._sleep_until_changed(storage, 0.3, storage.file_state())
    assert time.monotonic() - began >= 0.3
