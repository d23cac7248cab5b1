"""Fixtures shared by the test files."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from sweeper.trial.events import EpochEvent, Reporter, StartEvent, TrialResult

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS.parent / "scripts"))  # benchlib: the MLflow server the benchmarks start too
import benchlib  # noqa: E402
from benchlib import free_port  # noqa: E402,F401  (used by the test files)

# A PostgreSQL server for the tests that need one (scripts/start_postgres.sh starts it).
POSTGRES = os.environ.get("SWEEPER_TEST_POSTGRES_URL")
NEEDS_POSTGRES = pytest.mark.skipif(
    not POSTGRES,
    reason="SWEEPER_TEST_POSTGRES_URL is unset: start a server with "
    "`export \"$(bash scripts/start_postgres.sh | grep '^SWEEPER_TEST_POSTGRES_URL=')\"`",
)
# Test files that run at once (pytest -n auto). Many of them start sweeps of several worker
# processes or servers, so more than a few at once buys little and costs memory.
MAX_TEST_PROCESSES = 4


# The optional extras' tests (vision, transformers) are marked @pytest.mark.extras("torchvision",
# ...). Where a module they name is missing they skip; tests/test_extras.py runs them all in
# .venv-extras (scripts/setup.sh makes it with SWEEPER_EXTRAS=1; CI does), where torch is the
# build that torchvision was made for.
EXTRAS_ENV = TESTS.parent / ".venv-extras"


def pytest_runtest_setup(item) -> None:
    marker = item.get_closest_marker("extras")
    if marker is None:
        return
    missing = [name for name in marker.args if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: runs in {EXTRAS_ENV.name} (tests/test_extras.py)")


def pytest_xdist_auto_num_workers(config) -> int:
    from sweeper.sweep.workers import usable_cores

    return max(1, min(MAX_TEST_PROCESSES, usable_cores()))


class Gates:
    """Files through which a test paces the trials of sweep workers (other processes), instead of
    guessing with sleeps. Set TRIAL_GATES to a folder to use them; every wait gives up after
    LIMIT seconds, so a test whose gate never opens fails instead of hanging.

    Each trial that begins training takes the next ticket (files ticket-0, ticket-1, ...: the
    order trials began, whichever worker runs them). Then, from the environment:
    TRIAL_BARRIER=n        the first n tickets wait until n trials have begun: n workers each
                           hold one trial at the same moment (all of them take part);
    TRIAL_WAIT_FOR=2:a,4:b tickets from 2 on wait for the file `a`, from 4 on for `b` too (the
                           test creates them when it has done what comes before);
    TRIAL_HOLD_AFTER=k     trials past the first k hold after their first epoch (GatedTrainer:
                           when their second epoch's first steps are reported, the first
                           epoch's checkpoint written), each writing held-<i> (i = 0, 1, ...:
                           the order they began holding; its text is the worker's pid), until
                           the file `release` appears or their worker is asked to stop (Ctrl-C);
    TRIAL_HOLD_MAX=m       at most m trials hold (the others run through).
    """

    LIMIT = 900.0  # seconds: only a gate that never opens comes near it
    POLL = 0.02

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls) -> Gates | None:
        folder = os.environ.get("TRIAL_GATES")
        return cls(Path(folder)) if folder else None

    def _claim(self, prefix: str, stop: float = math.inf) -> int | None:
        """The first free `prefix-<i>` (i < stop), created with this pid in it, or None."""
        index = 0
        while index < stop:
            try:
                descriptor = os.open(self.folder / f"{prefix}-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                index += 1
                continue
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)
            return index
        return None

    def wait(self, ready: Callable[[], bool], what: str, stop: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + self.LIMIT
        while not ready() and not stop():
            if time.monotonic() > deadline:
                raise RuntimeError(f"test gate: waited {self.LIMIT:.0f}s in vain for {what}")
            time.sleep(self.POLL)

    def enter(self) -> int:
        """Take this trial's ticket and wait at the gates it must pass before training."""
        ticket = self._claim("ticket")
        barrier = int(os.environ.get("TRIAL_BARRIER", "0"))
        if ticket < barrier:
            last = self.folder / f"ticket-{barrier - 1}"
            self.wait(last.exists, f"{barrier} trials to begin")
        for gate in filter(None, os.environ.get("TRIAL_WAIT_FOR", "").split(",")):
            start, _, name = gate.partition(":")
            if ticket >= int(start):
                self.wait((self.folder / name).exists, f"the file {name}")
        return ticket

    def hold(self, ticket: int, reporters: Sequence) -> None:
        """Hold here (TRIAL_HOLD_AFTER, TRIAL_HOLD_MAX) until released or asked to stop."""
        after = os.environ.get("TRIAL_HOLD_AFTER")
        if after is None or ticket < int(after):
            return
        if self._claim("held", stop=float(os.environ.get("TRIAL_HOLD_MAX", "inf"))) is None:
            return
        from sweeper.sweep.workers import StopRequest

        stops = [r for r in reporters if isinstance(r, StopRequest)]
        release = self.folder / "release"
        self.wait(release.exists, "the file release", stop=lambda: any(s.requested for s in stops))


def wait_until(ready: Callable[[], object], what: str, process: subprocess.Popen | None = None, timeout: float = 300):
    """Poll `ready()` until it is truthy; return it. `process`, when given, must still be running
    meanwhile. The timeout is a limit for hangs only."""
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if process is not None:
            assert process.poll() is None, process.communicate()
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s in vain for {what}")
        time.sleep(0.05)
    return found


def wait_for_file(path: Path, process: subprocess.Popen | None = None, timeout: float = 300) -> str:
    """Wait until a worker has written `path` (a gate file: created, then its pid written in
    it); return its text. `process`, when given, must still be running meanwhile."""
    wait_until(lambda: path.exists() and path.stat().st_size, str(path), process, timeout)
    return path.read_text()


class StandInTrainer:
    """A fast, deterministic stand-in for sweeper.training.trainer with the same interface.

    Sweep workers are separate processes, so they load it by name (the stand_in_sweep fixture).
    Its accuracy rises with the epochs and peaks at lr.high = 3e-3, so pruners see clearly
    better and worse trials. Environment knobs:
    STAND_IN_EPOCH_SECONDS (sleep per epoch: work, its length never decides a test),
    STAND_IN_RAISE_SHAPE (raise for that shape), STAND_IN_DIVERGE_SHAPE (end as "diverged" for
    that shape), STAND_IN_MODULES (a folder: each trial writes there which MLflow modules its
    process has loaded), and the TRIAL_* gates (Gates). It reports as its device the
    CUDA_VISIBLE_DEVICES it was started with, which is what torch would see.
    """

    @staticmethod
    def available_metrics(cfg) -> tuple[str, ...]:
        return ("accuracy", "loss")

    @staticmethod
    def train(cfg, reporters=()) -> TrialResult:
        start = time.time()
        shape = cfg.shape._target_.rsplit(".", 1)[-1]
        if os.environ.get("STAND_IN_RAISE_SHAPE") == shape:
            raise RuntimeError(f"stand-in failure for {shape}")
        gates = Gates.from_env()
        ticket = gates.enter() if gates else 0
        for reporter in reporters:
            device = os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu"
            reporter.on_start(StartEvent({}, (cfg.lr.get("high", 1e-3),), 1, cfg.train.epochs, device))
        if os.environ.get("STAND_IN_MODULES"):
            loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "mlflow")
            Path(os.environ["STAND_IN_MODULES"], f"{os.getpid()}-{time.time_ns()}").write_text(json.dumps(loaded))
        result = TrialResult("finished", None, cfg.train.objective)
        for epoch in range(cfg.train.epochs):
            time.sleep(float(os.environ.get("STAND_IN_EPOCH_SECONDS", "0")))
            if os.environ.get("STAND_IN_DIVERGE_SHAPE") == shape:
                result.status, result.reason = "diverged", f"loss became nan at epoch {epoch}"
                break
            distance = abs(math.log10(cfg.lr.get("high", 1e-3)) - math.log10(3e-3))
            accuracy = (1 - distance / 3) * (epoch + 1) / cfg.train.epochs
            metrics = {"accuracy": accuracy, "loss": 1 - accuracy}
            event = EpochEvent(epoch, epoch, 1 - accuracy, 1 - accuracy, metrics, metrics[cfg.train.objective])
            result.epochs.append(event)
            result.objective = event.objective
            if any([reporter.on_epoch(event) for reporter in reporters]):
                result.status = "pruned"
                break
            if epoch == 0 and gates:
                gates.hold(ticket, reporters)  # mid-trial: its first epoch recorded, more to come
        result.seconds = time.time() - start
        for reporter in reporters:
            reporter.on_end(result)
        return result


class GatedTrainer:
    """sweeper.training.trainer itself, each trial starting when the TRIAL_* gates (Gates) let it: real
    training, paced by the test. Workers load it by name (sweep.trainer=conftest.GatedTrainer)."""

    @staticmethod
    def available_metrics(cfg) -> tuple[str, ...]:
        from sweeper.training import trainer

        return trainer.available_metrics(cfg)

    @staticmethod
    def prepare(cfg):
        from sweeper.training import trainer

        return trainer.prepare(cfg)

    @staticmethod
    def resolve_device(name: str):
        from sweeper.training import trainer

        return trainer.resolve_device(name)

    @staticmethod
    def train(cfg, reporters=()) -> TrialResult:
        from sweeper.training import trainer

        gates = Gates.from_env()
        if not gates:
            return trainer.train(cfg, reporters)
        ticket = gates.enter()
        reporters = list(reporters)
        return trainer.train(cfg, [*reporters, _HoldInSecondEpoch(gates, ticket, reporters)])


class _HoldInSecondEpoch(Reporter):
    """GatedTrainer's TRIAL_HOLD_AFTER: holds at the first step of the second epoch it hears of."""

    def __init__(self, gates: Gates, ticket: int, reporters: Sequence) -> None:
        self.gates, self.ticket, self.reporters, self.held = gates, ticket, reporters, False

    def on_step(self, event) -> None:
        if event.epoch >= 1 and not self.held:
            self.held = True
            self.gates.hold(self.ticket, self.reporters)


class RunsCodeWhenLoaded:
    """Pickled (torch.save), it creates the file `marker` when loaded by a loader that runs
    code: what a planted checkpoint or weights file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def with_tests_on_path() -> str:
    """PYTHONPATH with tests/ in front: worker processes then import StandInTrainer by name."""
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


@pytest.fixture
def stand_in_sweep(monkeypatch) -> tuple[str, ...]:
    """Overrides that run a sweep's trials on StandInTrainer (importable in worker processes too,
    tests/ on their PYTHONPATH) with MLflow off: the tests of the sweep machinery alone."""
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    return ("sweep.trainer=conftest.StandInTrainer", "tracking=none")


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory (anything written relative to it lands there), with none of
    the variables that point sweeper at servers or at config directories."""
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def sweeper_cli(tmp_path):
    """Run `sweeper ...` in tmp_path (so results/ lands there); returns the finished process."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:  # a limit for hangs only
        command = [sys.executable, "-m", "sweeper.cli", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    return run


def finished_sweep(sweeper_cli, tmp_path: Path, sweep: Sequence[str], n_trials: int):
    """Run `sweeper sweep` with these overrides to n_trials (one worker, the tmp_path results),
    check that every trial finished with an objective in [0, 1], and return the Optuna study."""
    import optuna

    from sweeper.sweep.study import count_trials, plan_sweep

    done = sweeper_cli("sweep", *sweep, f"sweep.n_trials={n_trials}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = plan_sweep(list(sweep), validate=False)
    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{tmp_path}/results/studies.db")
    assert count_trials(study).finished == n_trials
    assert all(t.user_attrs["status"] == "finished" and 0 <= t.value <= 1 for t in study.trials)
    assert f"sweep {plan.name}: {n_trials}/{n_trials} finished" in done.stdout
    return study


def flock_queue(pid: int | None = None) -> int:
    """How many lock requests (threads of this process, or other processes) wait on a flock()
    lock that process `pid` (default: this one) holds, as the kernel lists them in /proc/locks:
    the lock's own record of who waits on it, where a sleep could only guess."""
    locks = Path("/proc/locks")
    if not locks.exists():
        pytest.skip("needs /proc/locks (Linux) to see who waits on a file lock")
    pid = str(pid or os.getpid())
    held, queued = set(), []
    for line in locks.read_text().splitlines():
        fields = line.split()[1:]  # after "N:": [->] FLOCK ADVISORY WRITE pid dev:inode start end
        waiting = fields[:1] == ["->"]
        fields = fields[1:] if waiting else fields
        if fields[:1] != ["FLOCK"]:
            continue
        if waiting:
            queued.append(fields[4])
        elif fields[3] == pid:
            held.add(fields[4])
    return sum(file in held for file in queued)


def _queued_on(lock) -> Callable[[], bool]:
    """Whether anyone waits on the claim lock `lock` (held here), asked of the lock itself."""
    if lock.storage.path is not None:
        return lambda: flock_queue() > 0
    import sqlalchemy

    engine = sqlalchemy.create_engine(lock.storage.driver_url, poolclass=sqlalchemy.pool.NullPool)
    query = sqlalchemy.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = :key")

    def waiting() -> bool:
        with engine.connect() as connection:
            return connection.execute(query, {"key": lock.key}).scalar() > 0

    return waiting


def claim_order(first, second) -> list[str]:
    """Hold `first` while another thread takes `second`: who got through in which order.

    The holder lets go only once the other thread is queued on the lock, as the lock itself says
    (the kernel for a file lock, pg_locks for PostgreSQL's advisory lock), or has got through,
    which only a lock that does not exclude lets it do: no sleep decides the order."""
    order = []

    def contend():
        with second:
            order.append("second")

    with first:
        thread = threading.Thread(target=contend, daemon=True)
        thread.start()
        queued = _queued_on(first)
        deadline = time.monotonic() + 120
        while thread.is_alive() and not queued():
            assert time.monotonic() < deadline, "the other holder neither waited on the lock nor got through in 120 s"
            time.sleep(0.01)
        order.append("first")  # a working lock keeps the other holder waiting until here
    thread.join(120)
    return order


class MlflowServer(benchlib.MlflowServer):
    """benchlib's MLflow server, whose stop() returns only once its port refuses connections: a
    test that stops it may count on it being out of reach (and on the port being free again).
    It may take up to 5 minutes to start, as on a loaded machine."""

    def start(self, timeout: float = 300) -> MlflowServer:
        return super().start(timeout)

    def stop(self) -> None:
        super().stop()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except ConnectionRefusedError:
                return
            except OSError:
                pass  # a timeout: nobody answered, not yet a refusal
            assert time.monotonic() < deadline, f"{self.url} still took connections 60 s after it was stopped"
            time.sleep(0.05)


def feed_trial(
    reporters, config: dict, *, groups: int = 3, epochs: int = 2, batches: int = 5, status: str = "finished", seed: int = 0
) -> TrialResult:
    """Play one trial's events into a reporter (or several, in order, as the trainer calls them)
    without training: deterministic step and epoch values (distinct per seed), so a test can
    check every recorded number."""
    from sweeper.trial.events import Reporter, StepEvent

    reporters = [reporters] if isinstance(reporters, Reporter) else list(reporters)
    peaks = tuple(1e-3 / 10 ** (groups - 1 - g) for g in range(groups))
    for reporter in reporters:
        reporter.on_start(StartEvent(config, peaks, groups, epochs * batches, "cpu"))
    result = TrialResult(status, None, "accuracy", device="cpu", seconds=1.5)
    for epoch in range(epochs):
        for batch in range(batches):
            step = epoch * batches + batch
            scale = (1 + math.cos(math.pi * step / (epochs * batches))) / 2
            event = StepEvent(step, epoch, "train", tuple(p * scale for p in peaks), 0.85 + 0.1 * scale, 2.0 / (step + 1) + seed)
            result.steps.append(event)
            for reporter in reporters:
                reporter.on_step(event)
        accuracy = 0.5 + 0.1 * epoch + 0.01 * seed
        metrics = {"accuracy": accuracy, "loss": 1.1 / (epoch + 1)}
        event = EpochEvent(epoch, (epoch + 1) * batches, 1.0 / (epoch + 1), metrics["loss"], metrics, accuracy)
        result.epochs.append(event)
        result.objective = accuracy
        for reporter in reporters:
            reporter.on_epoch(event)
    for reporter in reporters:
        reporter.on_end(result)
    return result


@pytest.fixture
def tracked_config(tmp_path):
    """compose_config for tests whose MLflow store and results live in tmp_path/results."""
    from sweeper.config import compose_config

    def compose(*overrides: str):
        return compose_config([f"results_dir={tmp_path}/results", *overrides])

    return compose


@pytest.fixture
def mlflow_server(tmp_path):
    """A started MlflowServer over tmp_path/server; stopped after the test."""
    server = MlflowServer(tmp_path / "server").start()
    yield server
    server.stop()


@pytest.fixture
def trial_config(tmp_path):
    """compose_config for trainer tests: results (the pre-trained body cache too) in
    tmp_path/results, MLflow off."""
    from sweeper.config import compose_config

    def compose(*overrides: str):
        return compose_config([f"results_dir={tmp_path}/results", "tracking=none", *overrides])

    return compose


@contextmanager
def before_each_optimizer_step(record: Callable) -> Iterator[None]:
    """Call `record(optimizer)` just before every optimizer step taken inside the block."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: record(optimizer))
    try:
        yield
    finally:
        handle.remove()
