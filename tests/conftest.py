"""Fixtures and hooks shared by the test files (what they share besides fixtures: tests/helpers/)."""

from __future__ import annotations

import collections
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.forked_cli import run_sweeper
from helpers.processes import EXTRAS_ENV, with_tests_on_path
from helpers.servers import MlflowServer

# Test files that run at once (pytest -n auto). Many of them start sweeps of several worker
# processes or servers, so more than a few at once buys little and costs memory.
MAX_TEST_PROCESSES = 4


# The optional extras' tests (vision, transformers) are marked @pytest.mark.extras("torchvision",
# ...). Where a module they name is missing they skip; tests/test_extras.py runs them all in
# EXTRAS_ENV (.venv-extras: scripts/setup.sh makes it with SWEEPER_EXTRAS=1; CI does), where torch
# is the build that torchvision was made for.
def pytest_runtest_setup(item) -> None:
    marker = item.get_closest_marker("extras")
    if marker is None:
        return
    missing = [name for name in marker.args if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: runs in {EXTRAS_ENV.name} (tests/test_extras.py)")


# Each test file's seconds in a run of the suite (scripts/test_durations.py writes it).
DURATIONS = json.loads((Path(__file__).parent / "durations.json").read_text())
SLOW_TEST_SECONDS = 10  # a file not in DURATIONS yet: this much per end-to-end test it has


def pytest_collection_modifyitems(config, items) -> None:
    # pytest-xdist (--dist loadfile --no-loadscope-reorder: without it, xdist puts the files
    # with the most tests first) hands whole files to its workers in this order. The longest
    # files go first, so that the quick files fill the end of every worker, instead of one
    # worker running a long file alone while the others have finished. Within a file the order
    # is kept.
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))

    def seconds(item) -> float:
        return DURATIONS.get(f"tests/{item.path.name}", SLOW_TEST_SECONDS * slow[item.path])

    items.sort(key=lambda item: -seconds(item))


def pytest_xdist_auto_num_workers(config) -> int:
    from sweeper.sweep.workers import usable_cores

    return max(1, min(MAX_TEST_PROCESSES, usable_cores()))


@pytest.fixture
def stand_in_sweep(monkeypatch) -> tuple[str, ...]:
    """Overrides that run a sweep's trials on StandInTrainer (importable in worker processes too,
    tests/ on their PYTHONPATH) with MLflow off: the tests of the sweep machinery alone."""
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    return ("sweep.trainer=helpers.trainers.StandInTrainer", "tracking=none")


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
    """Run `sweeper ...` in tmp_path (so results/ lands there), forked from a process that has
    loaded what the commands load (helpers.forked_cli); returns the finished process."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:  # a limit for hangs only
        return run_sweeper(args, tmp_path, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An embedded MLflow store as a new sweep makes it (sweeper.records.mlflow_store), made once
    a test process: the tests that need a store, not its making, start from a copy. Its making
    is tested in test_records_safety.py, test_mlflow_schema.py and by every sweep run in a
    fresh folder."""
    from sweeper.records.mlflow_store import _make_whole

    path = tmp_path_factory.mktemp("empty-mlflow-store") / "mlflow.db"
    _make_whole(path)
    return path


@pytest.fixture
def tracked_config(tmp_path, empty_mlflow_store):
    """compose_config for tests whose MLflow store (a new one, empty) and results live in
    tmp_path/results."""
    from sweeper.config import compose_config

    (tmp_path / "results").mkdir(exist_ok=True)
    shutil.copyfile(empty_mlflow_store, tmp_path / "results" / "mlflow.db")

    def compose(*overrides: str):
        return compose_config([f"results_dir={tmp_path}/results", *overrides])

    return compose


@pytest.fixture
def mlflow_server(tmp_path, empty_mlflow_store):
    """A started MlflowServer over tmp_path/server (a new store); stopped after the test."""
    server = MlflowServer(tmp_path / "server", store=empty_mlflow_store).start()
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
