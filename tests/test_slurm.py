"""launcher=slurm on a real SLURM cluster (scripts/start_slurm.sh: a one-node cluster on loopback,
munge, slurmctld, slurmd and slurmdbd's accounting) with the study in PostgreSQL, through the
`sweeper` command line: the trials run as jobs of one array (seen in squeue and sacct), Ctrl-C
stops them, a job SLURM ends has its trial run again, a job that starts late joins, and the jobs
get the sweep's command line through their environment.

The trials run on the stand-in trainer (helpers.trainers.StandInTrainer) behind the test's gates: what is
tested is the launching, not the training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from helpers.processes import POSTGRES
from helpers.waiting import wait_for_file, wait_until
from mlflow import MlflowClient
from optuna.trial import TrialState
from test_faults import finish, leave_no_sweep_behind, start_sweep  # noqa: F401 - the fixture cleans up

from sweeper.sweep.storage import StorageSpec

SLURM_CONF = os.environ.get("SWEEPER_TEST_SLURM_CONF")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.postgres,
    pytest.mark.skipif(
        not SLURM_CONF,
        reason="SWEEPER_TEST_SLURM_CONF is unset: start a cluster with "
        "`export \"$(bash scripts/start_slurm.sh | grep '^SWEEPER_TEST_SLURM_CONF=')\"`",
    ),
    pytest.mark.skipif(not POSTGRES, reason="SWEEPER_TEST_POSTGRES_URL is unset (scripts/start_postgres.sh)"),
    pytest.mark.timeout(600),  # beyond the sweeps' own limits
]
# One core and 1 GB a job: the test cluster is this machine.
JOB = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.mem_gb=1", "launcher.gpus_per_node=0"]
SWEEP = ["storage=postgres", "sweep.live=false", "sweep.poll=0.2", "pruner=none", "train.epochs=2", "sampler.seed=0"]


@pytest.fixture
def cluster(monkeypatch, stand_in_sweep, tmp_path):
    """The cluster's configuration and the study's URL in this test's environment (the sweep's
    and, through sbatch's export, its jobs'), a name no other sweep in the shared PostgreSQL
    has, and no job of it left behind."""
    monkeypatch.setenv("SLURM_CONF", SLURM_CONF)
    monkeypatch.setenv("SWEEPER_STORAGE_URL", POSTGRES)
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    yield Cluster(name, tmp_path, [*stand_in_sweep, *SWEEP, *JOB, f"sweep.name={name}"])
    slurm("scancel", f"--name=sweeper-{name}")


class Cluster:
    def __init__(self, name: str, folder: Path, overrides: list[str]) -> None:
        self.name, self.folder, self.overrides = name, folder, overrides
        self.gates = folder / "gates"

    def sweep(self, *overrides: str, **env: str) -> subprocess.Popen:
        return start_sweep(self.folder, *self.overrides, *overrides, env={"TRIAL_GATES": str(self.gates), **env})

    def queued(self) -> dict[str, str]:
        """The sweep's jobs in the queue (squeue, array tasks one by one): id -> state."""
        lines = slurm("squeue", "--noheader", "--array", f"--name=sweeper-{self.name}", "--format=%i %T").splitlines()
        return dict(line.split() for line in lines)

    def accounted(self, jobs: set[str]) -> dict[str, str]:
        """The sweep's jobs as accounting has them (sacct): id -> state, once it has every one of
        `jobs` ended. The controller hands a job's end to the accounting daemon after the job
        ends, so a sweep that has seen its jobs end may find accounting a moment behind."""

        def ended() -> dict[str, str] | None:
            lines = slurm(
                "sacct", "--noheader", "--parsable2", "--allocations", f"--name=sweeper-{self.name}", "--format=JobID,State"
            ).splitlines()
            states = dict(line.split("|") for line in lines)
            still = ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED")
            return states if jobs <= set(states) and not any(states[job].startswith(still) for job in jobs) else None

        return wait_until(ended, f"accounting to have jobs {sorted(jobs)} ended", timeout=120)

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.name, storage=StorageSpec(POSTGRES).driver_url)


def slurm(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def job_of(pid: str) -> str:
    """The array task (A_T) that a worker process runs in, from its environment."""
    environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"


def simulated_gpus() -> int:
    """The GPUs the test cluster's node offers (start_slurm.sh simulates 2 where it may)."""
    return sum(int(gres.rsplit(":", 1)[1]) for gres in slurm("sinfo", "--noheader", "--format=%G").split() if gres.startswith("gpu:"))


def test_a_sweep_runs_its_trials_as_jobs_of_one_array_with_the_command_line_in_their_environment(cluster):
    gpus = ["launcher.gres=gpu:1"] if simulated_gpus() >= 2 else []
    # Both jobs' first trials hold after their first epoch, together (the barrier): both jobs run.
    sweep = cluster.sweep("launcher.jobs=2", "sweep.n_trials=4", *gpus, TRIAL_BARRIER="2", TRIAL_HOLD_AFTER="0", TRIAL_HOLD_MAX="2")
    pids = [wait_for_file(cluster.gates / f"held-{i}", sweep) for i in (0, 1)]
    jobs = {job_of(pid) for pid in pids}
    assert len(jobs) == 2 and len({job.split("_")[0] for job in jobs}) == 1  # two tasks of one array
    assert all(cluster.queued().get(job) == "RUNNING" for job in jobs)
    for pid in pids:  # the command line is in no job's argv (ps shows argv to every user)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"sweep.n_trials" not in argv and b"storage=postgres" not in argv
    (cluster.gates / "release").touch()
    code, out, err = finish(sweep)
    assert code == 0, out[-3000:] + err[-3000:]

    study = cluster.study()
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert cluster.accounted(jobs) == dict.fromkeys(jobs, "COMPLETED")  # sacct: both ran to their end
    assert cluster.queued() == {}
    if gpus:  # each job saw the GPU SLURM gave it, and they were not the same one
        assert {t.user_attrs["device"] for t in study.trials} == {"0", "1"}
    # Nor is it in the job script or the pickles submitit keeps under results/.
    folder = cluster.folder / "results" / "slurm" / cluster.name
    kept = [*folder.glob("*.sh"), *folder.glob("*.pkl")]
    assert kept and not any(b"sweep.n_trials" in path.read_bytes() for path in kept)


def test_ctrl_c_stops_the_jobs_and_leaves_nothing_running(cluster):
    # Every trial holds after its first epoch until its worker is asked to stop.
    sweep = cluster.sweep("launcher.jobs=2", "sweep.n_trials=4", "tracking=local", TRIAL_BARRIER="2", TRIAL_HOLD_AFTER="0")
    pids = [wait_for_file(cluster.gates / f"held-{i}", sweep) for i in (0, 1)]
    assert sorted(cluster.queued().values()) == ["RUNNING", "RUNNING"]
    sweep.send_signal(signal.SIGINT)
    code, out, err = finish(sweep)
    assert code == 130, out[-3000:] + err[-3000:]
    assert cluster.queued() == {}  # nothing left in the queue
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    study = cluster.study()
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 2 and TrialState.RUNNING not in states  # to run again on resume
    client = MlflowClient(f"sqlite:///{cluster.folder}/results/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(cluster.name).experiment_id])
    assert len(runs) == 3 and not [r for r in runs if r.info.status == "RUNNING"]  # the sweep's and both trials'


@pytest.mark.parametrize("end", ["scancel", "time limit"])
def test_a_job_that_slurm_ends_has_its_trial_run_again_in_another_job(cluster, end):
    # The first trial holds in its job; the other job runs the rest, then waits for that trial.
    sweep = cluster.sweep(
        "launcher.jobs=2", "sweep.n_trials=3", "storage.heartbeat_interval=1", "storage.grace_period=3",
        TRIAL_HOLD_AFTER="0", TRIAL_HOLD_MAX="1",
    )  # fmt: skip
    job = job_of(wait_for_file(cluster.gates / "held-0", sweep))
    if end == "scancel":  # as an administrator, or the user, from outside the sweep
        slurm("scancel", job)
    else:  # the job's time limit, made to have passed (SLURM checks it every half minute)
        slurm("scontrol", "update", f"jobid={job}", "timelimit=0")
    code, out, err = finish(sweep)
    assert code == 0, out[-3000:] + err[-3000:]
    ended = {"scancel": "CANCELLED", "time limit": "TIMEOUT"}[end]
    assert cluster.accounted({job})[job].startswith(ended)
    assert f"job {job} was ended by SLURM ({ended})" in out
    study = cluster.study()
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3


def test_a_job_that_starts_late_joins_the_running_sweep(cluster):
    # Both jobs are submitted held (launcher.sbatch_args); the test
    # lets the second start only once the first runs a trial.
    sweep = cluster.sweep(
        "launcher.jobs=2", "sweep.n_trials=3", "launcher.sbatch_args=[--hold]",
        TRIAL_HOLD_AFTER="0", TRIAL_HOLD_MAX="1",
    )  # fmt: skip
    jobs = wait_until(lambda: sorted(cluster.queued()), "the held jobs in the queue", sweep)
    assert len(jobs) == 2 and set(cluster.queued().values()) == {"PENDING"}
    first, late = jobs
    slurm("scontrol", "release", first)
    assert job_of(wait_for_file(cluster.gates / "held-0", sweep)) == first
    slurm("scontrol", "release", late)
    # The late job's worker takes the other trials while the first job's holds.
    wait_until(lambda: sum(t.state == TrialState.COMPLETE for t in cluster.study().trials) == 2, "two trials", sweep)
    (cluster.gates / "release").touch()
    code, out, err = finish(sweep)
    assert code == 0, out[-3000:] + err[-3000:]
    workers = [t.user_attrs["worker"] for t in sorted(cluster.study().trials, key=lambda t: t.number)]
    assert len(workers) == 3 and workers[1] == workers[2] != workers[0]
    assert cluster.accounted({first, late}) == {first: "COMPLETED", late: "COMPLETED"}
