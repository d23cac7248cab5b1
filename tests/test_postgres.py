"""Sweeps across machines: several workers on one PostgreSQL study.

Needs a server: `export "$(bash scripts/start_postgres.sh | grep '^SWEEPER_TEST_POSTGRES_URL=')"`
(.ci/run does this) starts one on 127.0.0.1.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import optuna
import pytest
from helpers.processes import NEEDS_POSTGRES, POSTGRES
from helpers.waiting import claim_order

from sweeper.sweep.counts import count_trials
from sweeper.sweep.storage import StorageSpec

pytestmark = [pytest.mark.postgres, pytest.mark.slow, NEEDS_POSTGRES]


@pytest.fixture
def sweep_name():
    name = f"pg-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=StorageSpec(POSTGRES).open())
    except KeyError:
        pass  # the test failed before creating it


def test_two_workers_and_a_joining_one_share_the_study(sweeper_cli, stand_in_sweep, sweep_name, monkeypatch, tmp_path):
    monkeypatch.setenv("SWEEPER_STORAGE_URL", POSTGRES)  # as storage=postgres reads it
    monkeypatch.setenv("STAND_IN_EPOCH_SECONDS", "0.05")
    monkeypatch.setenv("TRIAL_GATES", str(tmp_path / "gates"))
    monkeypatch.setenv("TRIAL_BARRIER", "2")  # both workers take part, however late one starts
    common = ["storage=postgres", f"sweep.name={sweep_name}", *stand_in_sweep, "sweep.poll=0.2"]
    done = sweeper_cli("sweep", *common, "sweep.workers=2", "sweep.n_trials=8")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name=sweep_name, storage=StorageSpec(POSTGRES).open())
    assert count_trials(study).finished == 8
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2

    # Another machine joins with a larger budget: n_trials counts the study's finished trials.
    joined = sweeper_cli("worker", *common, "sweep.n_trials=11")
    assert joined.returncode == 0, joined.stderr
    assert count_trials(study).finished == 11
    assert "ran 3 trial(s)" in joined.stdout

    password = urlsplit(POSTGRES).password
    logs = "".join(p.read_text() for p in (tmp_path / "results").rglob("*.log"))
    recorded = repr([t.user_attrs for t in study.trials]) + repr(study.user_attrs)
    for text in (done.stdout, done.stderr, joined.stdout, joined.stderr, logs, recorded):
        assert password not in text  # never a secret in output, logs or the study
    assert f"in {StorageSpec(POSTGRES).label()}" in done.stdout  # the POSTGRES is shown, masked


def test_advisory_claim_lock_excludes_workers_on_other_connections(sweep_name):
    first, second = StorageSpec(POSTGRES).claim(sweep_name), StorageSpec(POSTGRES).claim(sweep_name)
    assert claim_order(first, second) == ["first", "second"]  # the second waits on the server's lock
