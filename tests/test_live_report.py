"""The report written while a sweep's trials run (sweeper.analysis.live_report): how often it reads
the study to count its trials."""

from __future__ import annotations

import os

import optuna
import pytest

from sweeper.analysis import live_report
from sweeper.analysis.live_report import LiveReport
from sweeper.sweep.storage import StorageSpec


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A study in an embedded storage, its report, and how many times the report read its trials."""
    storage = StorageSpec(f"sqlite:///{tmp_path}/studies.db")
    study = optuna.create_study(study_name="s", storage=storage.open())
    reads = []
    read = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda *a, **k: reads.append(1) or read(*a, **k))
    return study, LiveReport(None, study, n_trials=4, storage=storage), reads


def written_a_second_ago(study_file) -> None:
    """The file's modification time a second back: a write after a count shows as a change even
    where the kernel stamps writes with a coarse clock (two writes in one tick, one time)."""
    stat = study_file.stat()
    os.utime(study_file, ns=(stat.st_atime_ns, stat.st_mtime_ns - 1_000_000_000))


def test_an_unchanged_study_file_is_counted_once_a_look(counted, monkeypatch):
    study, report, reads = counted
    monkeypatch.setattr(live_report, "LOOK_SECONDS", 60.0)  # however slowly the looks follow each other here
    study.enqueue_trial({})  # a trial waiting: neither finished nor running
    written_a_second_ago(report.storage.path)
    assert report._counts() == (0, 0) and report._counts() == (0, 0)
    assert len(reads) == 1  # the second look found the file as it was counted
    trial = study.ask()  # the file changes: the next look reads the trials again
    assert report._counts() == (0, 1) and len(reads) == 2
    written_a_second_ago(report.storage.path)
    study.tell(trial, 1.0)
    assert report._counts() == (1, 0) and len(reads) == 3


def test_the_counts_are_read_again_after_a_look_s_time_and_without_a_file(counted, monkeypatch):
    study, report, reads = counted
    monkeypatch.setattr(live_report, "LOOK_SECONDS", 0.0)  # every count is a look's time after the last
    assert report._counts() == (0, 0) and report._counts() == (0, 0)
    assert len(reads) == 2
    report.storage = None  # a server's study: nothing to compare
    monkeypatch.setattr(live_report, "LOOK_SECONDS", 60.0)
    assert report._counts() == (0, 0) and report._counts() == (0, 0)
    assert len(reads) == 4
