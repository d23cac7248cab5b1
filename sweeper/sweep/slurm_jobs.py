"""A sweep's workers as jobs of a SLURM cluster, submitted through submitit as one job array.

Every sbatch option a sweep's jobs need is a `launcher.*` setting (conf/launcher/slurm.yaml),
checked before anything is created; nothing is left to submitit's defaults but the job script's
shape. The jobs get the sweep's command line in their environment (sbatch exports the
submitter's), never in their argv or in the pickles submitit keeps.

How a job ends, and what becomes of its trial:
- the sweep stops it (Ctrl-C, SIGTERM, sweep.timeout): SIGINT to the job's worker (`scancel
  --signal=INT`), which marks its trial failed, sends its records and exits, as a local worker
  does; a job still queued after STOP_SECONDS is cancelled;
- SLURM ends it (its time limit, `scancel` from outside, preemption): the worker dies at once
  (SIGTERM), its trial's heartbeat stops, and after `storage.grace_period` another worker fails
  the trial and queues it again (`sweep.retries`); the sweep says how the job ended.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeper.config import ConfigError

__all__ = ["JobWorker", "SlurmSettings", "check_slurm", "submit_jobs"]

CLUSTERS = ("slurm", "local", "debug")  # submitit's: local and debug run the jobs here (tests)
STOP_SECONDS = 15  # for a stopped job's worker to mark its trial failed and send its records
STOP_POLL_SECONDS = 0.5
# How often the sweep asks SLURM's accounting (one sacct for all its jobs) how its jobs are: a job
# that ended without a result (killed) is seen this soon. submitit alone asks ever more rarely,
# after half the time since the last submission.
ACCOUNTING_SECONDS = 10.0
# How SLURM ended a job that did not finish on its own (sacct's states).
ENDED_BY_SLURM = ("TIMEOUT", "CANCELLED", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL")
# Options with a launcher setting of their own: sbatch_args must not give them again.
OWN_OPTIONS = {
    "partition": "partition",
    "time": "timeout_min",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem_gb",
    "gpus_per_node": "gpus_per_node",
    "gres": "gres",
    "array": "array_parallelism",
    "account": "account",
    "qos": "qos",
    "job_name": "(the sweep's name)",
    "output": "folder",
    "error": "folder",
}
GRES = re.compile(r"[A-Za-z][\w.-]*(:[\w.-]+)*:\d+(,[A-Za-z][\w.-]*(:[\w.-]+)*:\d+)*")
NAME = re.compile(r"[\w.+-]+")  # a partition, account or QOS name: no spaces, nothing a shell reads


@dataclass(frozen=True)
class SlurmSettings:
    """The launcher's settings, checked: what submit_jobs hands submitit."""

    cluster: str
    jobs: int
    folder: str
    parameters: dict[str, Any] = field(default_factory=dict)  # submitit's AutoExecutor parameters


def check_slurm(launcher: DictConfig) -> SlurmSettings:
    """The launcher.* settings of launcher=slurm, read into what submitit takes; their single
    numbers are checked with the config (sweeper.config.values), the rest here, each refused in
    one line that names it and the fix."""
    cluster = launcher.cluster
    if cluster not in CLUSTERS:
        raise ConfigError(f"launcher.cluster: {cluster!r} is not one of {', '.join(CLUSTERS)}; e.g. launcher.cluster=slurm.")
    jobs, parallel, timeout = launcher.jobs, launcher.array_parallelism, launcher.timeout_min
    cpus, gpus, memory = launcher.cpus_per_task, launcher.gpus_per_node, launcher.mem_gb
    gres = launcher.gres
    if gres is not None and not (isinstance(gres, str) and GRES.fullmatch(gres)):
        raise ConfigError(f"launcher.gres: {gres!r} is not a SLURM gres request; e.g. launcher.gres=gpu:1 or launcher.gres=gpu:a100:2.")
    if gres is not None and gpus:
        raise ConfigError(
            f"launcher.gres: {gres} and launcher.gpus_per_node={gpus} both ask for GPUs; give one: "
            f"launcher.gpus_per_node=0 with launcher.gres, or launcher.gres=null."
        )
    names = {key: _name(f"launcher.{key}", launcher[key]) for key in ("partition", "account", "qos")}
    setup = OmegaConf.to_container(launcher.setup) if isinstance(launcher.setup, ListConfig) else launcher.setup
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise ConfigError(f"""launcher.setup: {setup!r} must be a list of shell lines, e.g. launcher.setup='["module load cuda"]'.""")
    extra = _sbatch_args(launcher.sbatch_args)
    parameters: dict[str, Any] = {
        "timeout_min": timeout,
        "cpus_per_task": cpus,
        "gpus_per_node": gpus or None,  # 0 would also take away the GPUs of a gres request
        "mem_gb": memory,
        "slurm_partition": names["partition"],
        "slurm_account": names["account"],
        "slurm_qos": names["qos"],
        "slurm_gres": gres,
        "slurm_array_parallelism": parallel or jobs,
        "slurm_setup": setup,
        "slurm_additional_parameters": extra,
    }
    # None: left to the cluster (sbatch is not given the option at all).
    return SlurmSettings(cluster, jobs, str(launcher.folder), {k: v for k, v in parameters.items() if v is not None})


def _name(setting: str, value: object) -> str | None:
    if value is None or (isinstance(value, str) and NAME.fullmatch(value)):
        return value
    raise ConfigError(
        f"{setting}: {value!r} must be a name SLURM knows (see sinfo, sacctmgr show assoc), or null for the cluster's default."
    )


def _sbatch_args(value: object) -> dict[str, Any]:
    """launcher.sbatch_args: other sbatch options, `--option=value` or `--flag`, as submitit's
    additional parameters ({option: value}, true for a flag)."""
    args = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    example = """e.g. launcher.sbatch_args='["--constraint=a100", "--exclusive"]'"""
    if not isinstance(args, list):
        raise ConfigError(f"launcher.sbatch_args: {value!r} must be a list of sbatch options, {example}.")
    extra: dict[str, Any] = {}
    for arg in args:
        option, equals, given = str(arg).partition("=")
        if not (isinstance(arg, str) and option.startswith("--") and NAME.fullmatch(option[2:])):
            raise ConfigError(
                f"launcher.sbatch_args: {arg!r} is not an sbatch option in its long form (--option=value or --flag), {example}."
            )
        key = option[2:].replace("-", "_")
        if key in OWN_OPTIONS:
            own = OWN_OPTIONS[key]
            fix = f"use launcher.{own}" if not own.startswith("(") else f"it is set from {own}"
            raise ConfigError(f"launcher.sbatch_args: {option} has a setting of its own; {fix}.")
        extra[option[2:]] = given if equals else True
    return extra


@dataclass
class JobWorker:
    """One worker job: the sweep watches it with poll() and ends it with stop()."""

    label: str
    log: Path
    job: Any  # submitit.Job
    code: int | None = None  # its exit code, once it has ended
    asked: ClassVar[float] = -math.inf  # when accounting was last asked, by any job's poll

    @property
    def job_id(self) -> str:
        return str(self.job.job_id)

    def poll(self) -> int | None:
        if self.code is not None:
            return self.code
        ask = time.monotonic() - JobWorker.asked >= ACCOUNTING_SECONDS
        if ask:
            JobWorker.asked = time.monotonic()
        if not self.job.done(force_check=ask):
            return None
        self.code = self._exit_code()
        return self.code

    def _exit_code(self) -> int:
        # Without a result the job was killed (submitit's result() would wait 15 s for one).
        if not self.job.paths.result_pickle.exists():
            self._say_how_slurm_ended_it()
            return 1
        try:
            result = self.job.result()
        except Exception:  # noqa: BLE001 - the worker raised: its log has the traceback
            return 1
        return result if isinstance(result, int) else 0

    def _say_how_slurm_ended_it(self) -> None:
        state = str(self.job.state).split()[0].upper()  # "CANCELLED by 0" is one
        if state not in ENDED_BY_SLURM:
            return
        print(
            f"sweeper: {self.label} was ended by SLURM ({state}); a trial it was running fails when its heartbeat "
            f"is storage.grace_period old and runs again (sweep.retries).",
            flush=True,
        )

    def stop(self) -> None:
        """Stop the job's worker as Ctrl-C stops a local one (its trial marked failed, its
        records sent), and cancel the job if it is still queued after STOP_SECONDS."""
        state = self._cluster_state()
        if state is None:
            return
        if state == "PENDING":
            self.job.cancel(check=False)
            self.code = 1
            return
        if not self.job.done():  # its worker still runs (a worker that has ended is only waited for)
            _slurm("scancel", "--signal=INT", self.job_id)
        deadline = time.monotonic() + STOP_SECONDS
        while self._cluster_state() is not None and time.monotonic() < deadline:
            time.sleep(STOP_POLL_SECONDS)
        if self._cluster_state() is not None:
            self.job.cancel(check=False)
            self.code = 1  # killed by the sweep: not a job that SLURM ended

    def _cluster_state(self) -> str | None:
        """The job's state in the queue (PENDING, RUNNING, COMPLETING...); None once it has left."""
        if not hasattr(self.job, "_interrupt"):  # submitit's local cluster: processes, not a queue
            return None if self.job.done() else "RUNNING"
        # The queue's word, not submitit's: a job whose worker has ended is listed until SLURM
        # has let it go, and a stopped sweep leaves nothing in the queue.
        states = _slurm("squeue", "--noheader", "--format=%T", f"--jobs={self.job_id}").split()
        return states[0] if states else None


def _slurm(*command: str) -> str:
    """A SLURM command's output; its failure (a job already gone) is an answer, not an error."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def submit_jobs(
    settings: SlurmSettings,
    name: str,
    body: Callable[..., int],
    arguments: Sequence[tuple],
    environment: Mapping[str, str],
) -> list[JobWorker]:
    """Submit one job per entry of `arguments`, each running `body(*entry)`, as one job array;
    `environment` reaches the jobs through sbatch's export of this process's environment."""
    import submitit

    executor = submitit.AutoExecutor(folder=settings.folder, cluster=settings.cluster)
    executor.update_parameters(name=f"sweeper-{name}", **settings.parameters)
    # sbatch exports the environment it is started from (as submitit's local cluster does): the
    # sweep's command line, which may hold a password, travels there, and not in the job's pickle.
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        with executor.batch():
            submitted = [executor.submit(body, *entry) for entry in arguments]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return [JobWorker(f"job {job.job_id}", Path(job.paths.stdout), job) for job in submitted]
