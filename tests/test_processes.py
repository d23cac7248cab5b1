"""The sweep's processes: what other users can see of them, how they end, and what they do when
something outside stops them.

- Workers' argv (what `ps` shows every user) holds nothing of the sweep's command line.
- Workers end with their sweep, even one killed with SIGKILL; SIGTERM stops a sweep as Ctrl-C.
- A worker stopped (SIGSTOP) past the heartbeat grace finds its trial taken over, and goes on.
- A results_dir that cannot be written stops a sweep in one line, before anything is written.

The sweeps here run GatedTrainer: the stand-in trainer (tests/helpers/trainers.py) held at the start of each
trial until the test opens the gate, so a test looks at workers that are surely mid-trial.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers.forked_cli import popen
from helpers.processes import with_tests_on_path
from helpers.trainers import StandInTrainer
from optuna.trial import TrialState

from sweeper.cli import main
from sweeper.commands.sweeping import _wait_for_exit
from sweeper.stop_signals import StopSignals, raise_if_stopped
from sweeper.sweep.counts import count_trials
from sweeper.sweep.live import fail_trials_of_dead_worker, how_it_ended
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.storage import StorageSpec
from sweeper.sweep.study import open_study
from sweeper.sweep.workers import StopRequest, TrialAttributesWriter, run_worker
from sweeper.trial.events import StepEvent

SECRET = "Pr0c-s3cret-Vw4"  # recognisable anywhere it might leak
GATE = "SWEEPER_TEST_GATE"  # the folder GatedTrainer signals through
GATE_SECONDS = 120  # a gate never opened fails its trial: no worker waits for ever
WAIT_SECONDS = 120  # for a condition the test waits on (generous: two shared cores)
STAND_IN = ["sweep.poll=0.2", "sweep.live=false", "pruner=none", "train.epochs=1", "sweep.cpu_threads=1", "tracking=none"]


class GatedTrainer:
    """The stand-in trainer, held at the start of a trial until the gate opens (the file `open`
    in the folder $SWEEPER_TEST_GATE). It says that it started with the file `started-PID` there,
    PID being its worker's. While it waits it reports a step now and then, as the real trainer's
    loop does, so a stop request reaches it at once."""

    available_metrics = StandInTrainer.available_metrics

    @staticmethod
    def train(cfg, reporters=()):
        gate = Path(os.environ[GATE])
        (gate / f"started-{os.getpid()}").touch()
        step = StepEvent(0, 0, "train", (1e-3,), None, 1.0)
        deadline = time.monotonic() + GATE_SECONDS
        while not (gate / "open").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nobody opened the gate in {GATE_SECONDS} s")
            for reporter in reporters:
                reporter.on_step(step)
            time.sleep(0.05)
        return StandInTrainer.train(cfg, reporters)


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_SECONDS):
    """Poll `condition` until it is truthy; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"waited {timeout} s in vain for {what}")


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, ended but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):
            pass  # ended meanwhile
    return found


class GatedSweep:
    """`sweeper sweep` on GatedTrainer, in its own process group, in `folder`."""

    def __init__(self, folder: Path, *overrides: str) -> None:
        self.folder = folder
        self.gate = folder / "gate"
        self.gate.mkdir()
        command = [
            sys.executable, "-m", "sweeper.cli", "sweep", "sweep.trainer=test_processes.GatedTrainer", *STAND_IN,
            *overrides,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": with_tests_on_path(), GATE: str(self.gate)}
        self.process = popen(command, folder, env, session=True)  # helpers.forked_cli

    def workers_in_trials(self, count: int) -> list[int]:
        """Wait until `count` workers are inside a trial; their process ids."""

        def started():
            assert self.process.poll() is None, self.process.communicate()
            pids = [int(p.name.removeprefix("started-")) for p in self.gate.glob("started-*")]
            return pids if len(pids) >= count else None

        return wait_until(started, f"{count} workers in a trial")

    def open_gate(self) -> None:
        (self.gate / "open").touch()

    def finish(self, timeout: float = WAIT_SECONDS) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{self.folder}/results/studies.db")

    def worker_logs(self) -> str:
        return "".join(p.read_text() for p in sorted((self.folder / "results" / "sweeps" / "mlp-digits").glob("worker-*.log")))

    def end(self) -> None:
        """Leave nothing running: the sweep's process group, and any worker left outside it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.communicate(timeout=30)
        for started in self.gate.glob("started-*"):
            pid = int(started.name.removeprefix("started-"))
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                if alive(pid) and (b"sweeper.cli" in argv or b"sweeper.sweep.warm" in argv):
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass


@pytest.fixture
def gated_sweep(tmp_path):
    """Start a GatedSweep with the given overrides; ended after the test, whatever happened."""
    sweeps: list[GatedSweep] = []

    def start(*overrides: str) -> GatedSweep:
        sweeps.append(GatedSweep(tmp_path, *overrides))
        return sweeps[-1]

    yield start
    for sweep in sweeps:
        sweep.end()


# --- what other users can see -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("warm", "argv_starts"), [("true", b"sweeper.sweep.warm\0"), ("false", b"sweeper.cli\0worker\0")])
def test_no_worker_argv_holds_the_sweep_s_command_line(gated_sweep, warm, argv_starts):
    # A URL with a password on the command line (a setting nothing reads under tracking=none):
    # `ps` shows every user every process's argv.
    sweep = gated_sweep(
        f"+tracking.uri=http://sweeper:{SECRET}@127.0.0.1:9", "sweep.workers=2", "sweep.n_trials=2", f"launcher.warm={warm}"
    )
    workers = sweep.workers_in_trials(2)
    # every process the sweep started: its workers, or the warm server they were forked from
    started = children_of(sweep.process.pid)
    assert set(workers) == (started if warm == "false" else {w for s in started for w in children_of(s)})
    for pid in [*workers, *started]:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert argv_starts in argv  # a forked worker shows its server's argv
        assert SECRET.encode() not in argv and b"tracking.uri" not in argv
        # where the command line went instead: readable by the worker's owner alone
        assert stat.S_IMODE(os.stat(f"/proc/{pid}/environ").st_mode) == 0o400
    sweep.open_gate()
    code, out, err = sweep.finish()
    assert code == 0, out[-3000:] + err[-3000:]
    # and it reached the workers whole: each trial's recorded overrides hold it (masked)
    for trial in sweep.study().trials:
        assert "+tracking.uri=http://sweeper:***@127.0.0.1:9" in trial.user_attrs["overrides"]


def test_a_worker_joined_by_hand_takes_the_sweep_s_command_line_from_its_own(tmp_path, stand_in_sweep, capsys):
    overrides = [f"results_dir={tmp_path}/results", *stand_in_sweep, *STAND_IN, "sweep.n_trials=2"]
    study = open_study(plan_sweep(overrides, validate=False), create=True)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert main(["worker", *overrides]) == 0
    assert count_trials(study).complete == 2
    assert "worker 0: ran 2 trial(s) of sweep mlp-digits" in capsys.readouterr().out
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the command's own, given back


# --- how workers end --------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_end_when_their_sweep_is_killed(gated_sweep):
    sweep = gated_sweep("sweep.workers=2", "sweep.n_trials=2")
    workers = sweep.workers_in_trials(2)
    os.kill(sweep.process.pid, signal.SIGKILL)  # no chance to stop them itself
    sweep.finish()
    wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to end")
    # Each stopped as on Ctrl-C: its trial marked failed at once (not a minute later by the
    # heartbeat check), to run again when the sweep resumes.
    counts = count_trials(sweep.study())
    assert counts.running == 0 and counts.failed == 2
    assert sweep.worker_logs().count("stopped by SIGTERM; a trial it had started runs again") == 2


@pytest.mark.slow
def test_sigterm_stops_a_sweep_as_ctrl_c_does(gated_sweep):
    sweep = gated_sweep("sweep.workers=2", "sweep.n_trials=2")
    workers = sweep.workers_in_trials(2)
    os.kill(sweep.process.pid, signal.SIGTERM)  # the sweep alone, as kill or a scheduler sends it
    code, out, err = sweep.finish()
    assert code == 143, out[-3000:] + err[-3000:]  # 128 + SIGTERM, as a shell reports it
    assert "sweep mlp-digits: 0/2 finished (0 complete, 0 pruned), 2 failed" in out
    assert "interrupted; run the same command again to resume it" in out
    assert not any(alive(pid) for pid in workers)  # stopped, and waited for, before the sweep ended
    assert count_trials(sweep.study()).running == 0
    assert sweep.worker_logs().count("interrupted; a trial it had started runs again") == 2


def test_a_worker_hears_sigterm_as_ctrl_c():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopRequest()

    def unheard(signum, frame):
        raise AssertionError("SIGTERM went past the stop request")  # instead of ending pytest

    try:
        signal.signal(signal.SIGTERM, unheard)
        stop.install()
        signal.raise_signal(signal.SIGTERM)  # handled before raise_signal returns
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert stop.requested and stop.what == "stopped by SIGTERM" and stop.exit_code == 143
    with pytest.raises(KeyboardInterrupt):  # the running trial stops at its next step
        stop.on_step(StepEvent(0, 0, "train", (1e-3,), None, 1.0))


class _Running:
    """A worker that never exits on its own."""

    def poll(self) -> None:
        return None


def test_a_stop_whose_keyboardinterrupt_python_swallowed_still_stops_the_sweep_s_wait(monkeypatch):
    class Collected:
        pass

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", swallowed.append)  # where Python's "Exception ignored" goes

    with StopSignals() as stop:
        target = Collected()
        # SIGTERM arrives while the main thread is in a weakref callback: the handler's
        # KeyboardInterrupt is printed as "Exception ignored" and the program goes on.
        watched = weakref.ref(target, lambda _: signal.raise_signal(signal.SIGTERM))
        del target
        assert watched() is None and stop.received == signal.SIGTERM
        assert [type(seen.exc_value) for seen in swallowed] == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):  # the sweep's wait for its workers stops anyway
            _wait_for_exit([_Running()], seconds=5)
        raise_if_stopped()  # once: the sweep's handling of the stop is not stopped again
    assert stop.exit_code == 143 and StopSignals.active is None


@pytest.mark.slow
def test_a_worker_killed_by_a_signal_is_named_by_it_and_a_crash_leaves_its_stack(gated_sweep):
    sweep = gated_sweep("sweep.workers=1", "sweep.n_trials=1")
    (worker,) = sweep.workers_in_trials(1)
    os.kill(worker, signal.SIGSEGV)  # as a native library's crash does
    code, out, err = sweep.finish()
    assert "worker 0 (cpu x1): killed by SIGSEGV; its trial fails and runs again (sweep.retries)" in out + err, out[-3000:] + err[-3000:]
    # faulthandler wrote the Python stack of the crash into the worker's log
    logs = sweep.worker_logs()
    assert "Fatal Python error: Segmentation fault" in logs and "test_processes.py" in logs, logs[-3000:]
    # the trial it left running says so itself, failed at once, and waits as a retry for a resume
    trial, retry = sweep.study().trials
    assert trial.user_attrs["reason"].startswith("its worker was killed by SIGSEGV; its log: "), trial.user_attrs
    assert trial.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == trial.number and retry.params == trial.params


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (0, "exited 0"),
        (1, "exited 1"),
        (-signal.SIGSEGV, "killed by SIGSEGV"),
        (-signal.SIGKILL, "killed by SIGKILL (out of memory?"),
        (-200, "killed by signal 200"),  # no such signal: the number
    ],
)
def test_a_worker_s_exit_code_is_said_in_words(code, said):
    assert how_it_ended(code).startswith(said)


class DeadWorker:
    label, log = "worker 0 (cpu x1)", Path("results/sweeps/s/worker-0.log")

    def __init__(self, pid: int) -> None:
        self._pid = pid

    def pid(self) -> int:
        return self._pid


def test_the_trial_of_a_worker_killed_by_a_signal_is_failed_with_the_signal_s_name(tmp_path, capsys):
    """Its worker died without a word, and a heartbeat check that fails its trial knows nothing
    of why: the sweep, which saw the signal, records it on the trial, and the summary names it
    instead of "no reason recorded". (A storage without heartbeats: the reason alone.)"""
    from sweeper.boundary.checked_study import checked_study
    from sweeper.commands.sweeping import _failure_reasons

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    own, other = study.ask(), study.ask()
    own.set_user_attr("worker", f"{socket.gethostname()}:4242")
    other.set_user_attr("worker", f"{socket.gethostname()}:4343")  # another worker's, still running
    assert not fail_trials_of_dead_worker(study, DeadWorker(4242), -signal.SIGSEGV)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 2  # no heartbeats: left to the resume
    for trial in (own, other):
        study.tell(trial, state=TrialState.FAIL)  # as the heartbeat check does, without a reason
    reasons = _failure_reasons(checked_study(study))
    assert reasons == {
        "its worker was killed by SIGSEGV; its log: results/sweeps/s/worker-0.log": 1,
        "no reason recorded (its worker stopped or died)": 1,
    }, reasons


class StatesUnderClaim:
    """A stand-in for the sweep's claim: the study's trial states as each claim began and ended."""

    def __init__(self, study: optuna.Study) -> None:
        self.study, self.seen = study, []

    def __enter__(self) -> None:
        self.seen.append(("in", [t.state for t in self.study.trials]))

    def __exit__(self, *exc: object) -> None:
        self.seen.append(("out", [t.state for t in self.study.trials]))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")  # asked here, by hand
def test_the_trials_of_a_dead_worker_are_failed_and_queued_again_at_once(tmp_path):
    """Where the storage has heartbeats, what Optuna's heartbeat check would do a grace period
    later (a minute by default) is done when the sweep sees the worker die: its running trials
    (a fused worker's several) fail with the signal as their reason, and each is queued again
    once with its parameters; another worker's running trial and a trial finished are left."""
    storage = StorageSpec(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=600, retries=1).open()
    study = optuna.create_study(storage=storage, study_name="s")
    mine = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(3)]
    other = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for trial in mine:
        trial.set_user_attr("worker", f"{socket.gethostname()}:4242")
    other.set_user_attr("worker", f"{socket.gethostname()}:4343")
    study.tell(mine[2], 0.5)  # it finished before its worker died
    claim = StatesUnderClaim(study)
    assert fail_trials_of_dead_worker(study, DeadWorker(4242), -signal.SIGKILL, claim)
    fail_trials_of_dead_worker(study, DeadWorker(4242), -signal.SIGKILL, claim)  # seen again: nothing more
    # Failed and queued again under the claim workers count under: none counts between the two.
    running, done = TrialState.RUNNING, TrialState.COMPLETE
    assert claim.seen[0] == ("in", [running, running, done, running]), claim.seen
    assert claim.seen[1] == ("out", [TrialState.FAIL, TrialState.FAIL, done, running, TrialState.WAITING, TrialState.WAITING])
    trials = study.trials
    assert [t.state for t in trials[:4]] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING]
    assert all(t.user_attrs["reason"].startswith("its worker was killed by SIGKILL") for t in trials[:2])
    retries = trials[4:]
    assert [t.state for t in retries] == [TrialState.WAITING] * 2
    assert [(t.system_attrs["failed_trial"], t.params) for t in retries] == [(t.number, t.params) for t in trials[:2]]


# --- a worker whose trial was taken over ------------------------------------------------------


def fail_as_the_heartbeat_check_does(plan, number: int) -> None:
    """What another worker's heartbeat check does to a trial whose worker has been stopped past
    storage.grace_period: fail it, and queue it again (sweep.retries), through its own storage."""
    storage = plan.storage.open()
    study = optuna.load_study(study_name=plan.name, storage=storage)
    trial_id = study.get_trials(deepcopy=False)[number]._trial_id
    assert storage.set_trial_state_values(trial_id, TrialState.FAIL)
    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id))


class FailsItsTrialAtFirstEpoch(TrialAttributesWriter):
    """Fails its trial as the heartbeat check does, when the trial's first epoch is reported."""

    def __init__(self, trial, plan) -> None:
        super().__init__(trial)
        self.plan = plan

    def on_epoch(self, event) -> None:
        fail_as_the_heartbeat_check_does(self.plan, self.trial.number)


@pytest.mark.parametrize("when", ["between two epochs", "after its last epoch, before it is told"])
def test_a_worker_whose_trial_was_taken_over_says_so_and_goes_on(tmp_path, stand_in_sweep, capsys, when):
    plan = plan_sweep([f"results_dir={tmp_path}/results", *stand_in_sweep, *STAND_IN, "train.epochs=2", "sweep.n_trials=2"])
    study = open_study(plan, create=True)

    # The worker's own trainer fails its first trial at the chosen point, in the worker's own
    # thread: the takeover happens exactly there, with nothing left to chance.
    def train(cfg, reporters):
        (progress,) = [r for r in reporters if type(r) is TrialAttributesWriter]
        first = progress.trial.number == 0
        if first and when == "between two epochs":
            reporters = [FailsItsTrialAtFirstEpoch(progress.trial, plan), *reporters]
        result = StandInTrainer.train(cfg, reporters)
        if first and when == "after its last epoch, before it is told":
            fail_as_the_heartbeat_check_does(plan, 0)
        return result

    assert run_worker(plan, train=train) == 3  # the trial taken over, its retry, and one more
    taken, *others = study.trials
    assert taken.state == TrialState.FAIL
    (retry,) = [t for t in others if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.params == taken.params
    assert count_trials(study).complete == 2
    out = capsys.readouterr().out
    # one line, marked for the sweep's console ("sweeper: ", see sweeper.sweep.live.WorkerNotes)
    assert out.count("sweeper: trial 0 was taken over: this worker was stopped or stalled") == 1


# --- a results_dir that cannot be written -----------------------------------------------------


def deny_writes(monkeypatch, folder: Path) -> None:
    """`folder` read-only for this user: chmod, and where that does not bind (root may write
    anywhere) os.access answering as it would for another user."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access

        def as_another_user(path, mode, **kwargs):
            if Path(path).absolute() == folder and mode & os.W_OK:
                return False
            return access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", as_another_user)


@pytest.mark.parametrize(
    ("command", "case", "results_dir", "problem"),
    [
        ("sweep", "a file where a folder above it should be", "taken/results", "taken is a file, not a folder"),
        ("sweep", "a file where it should be", "taken", "taken is a file, not a folder"),
        ("sweep", "a folder above it that is read-only", "locked/results", "locked is read-only for you"),
        ("sweep", "a read-only working directory", "results", "locked is read-only for you"),
        ("worker", "a read-only working directory", "results", "locked is read-only for you"),  # joined by hand
    ],
)
def test_a_results_dir_that_cannot_be_written_stops_in_one_line_before_anything_is_written(
    workdir, stand_in_sweep, monkeypatch, capfd, command, case, results_dir, problem
):
    tmp_path = workdir
    (tmp_path / "taken").write_text("a file")
    locked = tmp_path / "locked"
    locked.mkdir()
    if case == "a read-only working directory":
        monkeypatch.chdir(locked)
    deny_writes(monkeypatch, locked)
    before = sorted(tmp_path.rglob("*"))
    try:
        code = main([command, *stand_in_sweep, *STAND_IN, "search=slices", f"results_dir={results_dir}"])
    finally:
        locked.chmod(0o755)
    err = capfd.readouterr().err
    assert code == 2, err
    assert err.startswith(f"sweeper {command}: error: results_dir: cannot write") and len(err.splitlines()) == 1, err
    assert problem in err and "set results_dir=PATH" in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a folder


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (["train.objective=f1"], "train.objective"),  # the trainer's metrics
        (["model.groups=[nope]"], "model.groups"),  # one trial built with the trainer's checks
    ],
)
def test_a_check_that_fails_while_the_workers_start_ends_them_and_writes_nothing(sweeper_cli, tmp_path, overrides, setting):
    """`sweeper sweep` starts its workers held, then checks the sweep; a check that fails then ends
    them and removes their logs and the folders made for them."""
    done = sweeper_cli("sweep", "sweep.workers=2", *overrides)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"sweeper sweep: error: {setting}:"), done.stderr
    assert not any(tmp_path.iterdir())  # no log, no results folder


def test_the_command_ends_without_the_teardown_but_after_what_exit_does_that_matters(tmp_path):
    """`sweeper` ends its process at once when the command returns (the teardown of thousands of
    modules took ~2 s after a sweep), but only after what the interpreter's exit does that
    matters: a running thread finishes, the atexit handlers run (the recorder's last sends),
    and what was printed without a newline is flushed. The exit code is the command's."""
    script = f"""
import atexit, threading
from pathlib import Path
from sweeper.cli import exit_now

folder = Path({str(tmp_path)!r})
def slow_writer():
    threading.Event().wait(1.0)  # still running when the command returns
    (folder / "thread").write_text("finished")
threading.Thread(target=slow_writer).start()  # not a daemon: exit waits for it
atexit.register(lambda: (folder / "atexit").write_text((folder / "thread").read_text()))
print("said, without a newline", end="")
exit_now(3)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "said, without a newline"
    assert (tmp_path / "atexit").read_text() == "finished"  # the handler ran after the thread ended
