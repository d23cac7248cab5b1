"""Commands and sweeps run as the user runs them: other processes, tests/ on their path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
EXTRAS_ENV = TESTS.parent / ".venv-extras"  # where the extras' tests run (tests/test_extras.py)

# A PostgreSQL server for the tests that need one (scripts/start_postgres.sh starts it).
POSTGRES = os.environ.get("SWEEPER_TEST_POSTGRES_URL")
NEEDS_POSTGRES = pytest.mark.skipif(
    not POSTGRES,
    reason="SWEEPER_TEST_POSTGRES_URL is unset: start a server with "
    "`export \"$(bash scripts/start_postgres.sh | grep '^SWEEPER_TEST_POSTGRES_URL=')\"`",
)


def with_tests_on_path() -> str:
    """PYTHONPATH with tests/ in front: worker processes then import StandInTrainer by name."""
    return os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))


def finished_sweep(sweeper_cli, tmp_path: Path, sweep: Sequence[str], n_trials: int):
    """Run `sweeper sweep` with these overrides to n_trials (one worker, the tmp_path results),
    check that every trial finished with an objective in [0, 1], and return the Optuna study."""
    import optuna

    from sweeper.sweep.counts import count_trials
    from sweeper.sweep.plan import plan_sweep

    done = sweeper_cli("sweep", *sweep, f"sweep.n_trials={n_trials}", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = plan_sweep(list(sweep), validate=False)
    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{tmp_path}/results/studies.db")
    assert count_trials(study).finished == n_trials
    assert all(t.user_attrs["status"] == "finished" and 0 <= t.value <= 1 for t in study.trials)
    assert f"sweep {plan.name}: {n_trials}/{n_trials} finished" in done.stdout
    return study
