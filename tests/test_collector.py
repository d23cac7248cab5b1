"""The garbage collector kept off what a process loads once (sweeper.collector): paused while a
command sets itself up, its objects then left out of every collection, and on again after."""

from __future__ import annotations

import gc
import json
import os
import sys

import pytest
from helpers.processes import with_tests_on_path

from sweeper.cli import main
from sweeper.collector import setting_up


@pytest.fixture(autouse=True)
def collector_as_it_was():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # this test process's objects go back to the collections
    (gc.enable if enabled else gc.disable)()


def test_setting_up_pauses_the_collector_then_leaves_what_it_made_out_and_collects_again():
    gc.enable()
    gc.unfreeze()
    with setting_up():
        assert not gc.isenabled()
        kept = [[] for _ in range(1000)]  # what a command loads: alive as long as it is
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    collected = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert not any(id(k) in collected for k in kept)  # in no generation a collection walks


def test_setting_up_turns_the_collector_back_on_after_an_error_and_leaves_it_off_if_it_was():
    gc.enable()
    with pytest.raises(ValueError), setting_up():
        raise ValueError("a refusal")
    assert gc.isenabled()
    gc.disable()
    with setting_up():
        pass
    assert not gc.isenabled()  # the caller's choice stands


@pytest.mark.parametrize(
    "argv", [["sweep", "sweep.n_trials=abc"], ["sweep", "--dry-run", "sweep.n_trials=2"], ["worker", "sweep.n_trials=abc"]]
)
def test_a_command_refused_or_dry_run_in_process_leaves_the_collector_on(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gc.enable()
    code = main(argv)
    assert code == (2 if "abc" in argv[-1] else 0), capsys.readouterr()
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the warm server forks")
def test_a_warm_servers_worker_collects_and_leaves_the_servers_objects_alone(tmp_path, monkeypatch):
    from sweeper.sweep.warm import WarmServer

    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    server = WarmServer(["sweeper.commands.schedule"])
    try:
        report = tmp_path / "gc.json"
        assert server.start(0, [sys.executable, "-m", "helpers.warm_gc", str(report)], dict(os.environ), tmp_path / "w.log")
        assert server.wait_exit(0, 300) == 0, (tmp_path / "w.log").read_text()
    finally:
        server.kill()
    seen = json.loads(report.read_text())
    assert seen["enabled"] and seen["frozen"] > 10_000  # the modules the server loaded: left out of its collections
