"""The warm server (sweeper.sweep.warm): workers forked from a process that imported their
modules once, each with its own environment, working directory and log, their exit codes
reported, and the server ending once its input has closed and its workers have ended.

The sweeps of the other files run their local workers through it (launcher.warm is on by
default): test_faults.py kills them mid-trial (SIGKILL), interrupts them, and kills the sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import with_tests_on_path
from helpers.waiting import wait_until

from sweeper.sweep.warm import WarmServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the warm server forks")

REPORT = [sys.executable, "-m", "helpers.warm_report"]  # prints what the warm-ups did before its fork


@pytest.fixture
def server():
    started = WarmServer(["sweeper.commands.schedule"])
    yield started
    started.kill()


def test_forked_workers_run_their_commands_into_their_own_logs(server, tmp_path):
    """(A sweep's worker finds its sweep's command line in the environment it is given here: every
    sweep of the suite runs through this.)"""
    env = dict(os.environ)
    assert server.start(
        0,
        [sys.executable, "-m", "sweeper.cli", "schedule", "--lr", "slice(1e-5,1e-3)", "--groups", "3", "--steps", "4", "--json"],
        env,
        tmp_path / "ok.log",
    )
    assert server.start(1, [sys.executable, "-m", "sweeper.cli", "schedule", "--lr", "abc"], env, tmp_path / "bad.log")
    assert server.wait_exit(0, 300) == 0 and server.wait_exit(1, 300) == 2
    printed = json.loads((tmp_path / "ok.log").read_text())
    assert len(printed["peaks"]) == 3 and printed["steps"] == 4
    bad = (tmp_path / "bad.log").read_text().splitlines()
    assert len(bad) == 1 and bad[0].startswith("sweeper schedule: error: ") and "abc" in bad[0]
    assert server.worker_pid(0) != server.pid and server.worker_pid(0) != os.getpid()
    server.close()  # no more workers: the server ends on its own
    wait_until(lambda: not server.alive(), "the server to end once its input closed")
    assert server.process.returncode == 0


def test_warm_ups_run_before_the_fork_and_one_that_fails_stops_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    server = WarmServer(["helpers.warm_marks:fail", "helpers.warm_marks:warm"])
    try:
        assert server.start(0, REPORT, dict(os.environ), tmp_path / "w.log")
        assert server.wait_exit(0, 300) == 0
    finally:
        server.kill()
    assert (tmp_path / "w.log").read_text().split() == ["warm"]


def test_the_workers_warm_up_leaves_their_study_and_config_nothing_to_import(tmp_path):
    """What a worker pays once per process before its first trial (SQLAlchemy, alembic, Optuna's
    storage, Hydra's first composition) is paid by the warm server's warm-up, before the fork."""
    script = f"""
import sys
from sweeper.commands.worker import warm_up
warm_up()
before = set(sys.modules)
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.study import open_study
plan = plan_sweep(["results_dir={tmp_path}", "tracking=none"], [], validate=False)
open_study(plan, create=True)
new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("sqlalchemy", "alembic", "optuna", "hydra", "omegaconf"))
print(new)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_stopping_a_worker_that_ends_as_it_is_stopped_is_no_error(tmp_path, monkeypatch):
    """Ctrl-C reaches the workers too: one may end between the sweep's look at it and its
    signal. That worker is stopped, not an error that ends the sweep with a traceback."""
    from sweeper.sweep import launchers

    class JustEnded:
        closed = False

        def exit_code(self, index: int) -> int | None:
            return None  # still running when looked at

        def worker_pid(self, index: int) -> int:
            return 4242

        def wait_exit(self, index: int, timeout: float) -> int:
            return 130

        def close(self) -> None:
            self.closed = True

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(launchers.os, "kill", gone)
    server = JustEnded()
    worker = launchers.WarmWorker("worker 0", tmp_path / "log", server, 0, [], {}, cold=lambda: None, started=True)
    worker.stop()
    assert server.closed


def test_an_early_request_is_served_between_two_loads_and_the_others_once_all_are_loaded(tmp_path, monkeypatch):
    """The sweep's check of its trainer needs only the server's first loads: it is forked between
    two loads, while a worker asked for at the same time waits until every load is done."""
    done = tmp_path / "early-done"
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    monkeypatch.setenv("EARLY_DONE", str(done))
    server = WarmServer(["helpers.warm_marks:warm", "helpers.warm_marks:after_the_early_one"])
    try:
        assert server.start(0, REPORT, dict(os.environ), tmp_path / "worker.log")  # waits for every load
        touch = [sys.executable, "-m", "helpers.warm_touch", str(done)]
        assert server.start(1, touch, dict(os.environ), tmp_path / "early.log", early=True)
        assert server.wait_exit(1, 300) == 0 and server.wait_exit(0, 300) == 0
    finally:
        server.kill()
    assert (tmp_path / "worker.log").read_text().split() == ["warm,after-early"]


def test_a_call_runs_in_the_server_with_the_environment_given_and_its_workers_have_what_it_made(tmp_path, monkeypatch):
    """WarmServer.prepare: the server calls a function itself, with a worker's environment (the
    sweep's plan is composed so, once); the workers forked after it have what it made, the
    server's own environment is put back, and a call that fails stops nothing."""
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    monkeypatch.delenv("WARM_MARK", raising=False)
    server = WarmServer(["helpers.warm_marks"])
    try:
        assert server.prepare("helpers.warm_marks:fail", dict(os.environ))
        assert server.prepare("helpers.warm_marks:mark_from_environment", {**os.environ, "WARM_MARK": "prepared"})
        assert server.prepare("helpers.warm_marks:mark_from_environment", dict(os.environ))  # the server's own, put back
        assert server.start(0, REPORT, dict(os.environ), tmp_path / "w.log")
        assert server.wait_exit(0, 300) == 0
    finally:
        server.kill()
    assert (tmp_path / "w.log").read_text().split() == ["prepared,unmarked"]


def test_a_sweeps_workers_take_the_plan_the_server_composed_for_their_command_line(tmp_path, monkeypatch, capsys):
    """prepare_plan composes a sweep's plan once (in the warm server, before it forks); a worker
    of exactly that command line that does not validate takes it from memory; another command
    line, or a worker that validates, composes its own."""
    from sweeper.cli import main
    from sweeper.commands import worker
    from sweeper.sweep.launchers import worker_command
    from sweeper.sweep.plan import plan_sweep

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(worker, "_PREPARED", {})
    monkeypatch.setattr(worker, "end_with_parent", lambda parent: None)  # this test's process has no sweep to end with
    checked, composed = [], []
    monkeypatch.setattr(worker, "check_trainer", checked.append)
    monkeypatch.setattr(worker, "plan_sweep", lambda *args, **kwargs: composed.append(args) or plan_sweep(*args, **kwargs))
    sweep = plan_sweep(["sweep.n_trials=3", "train.epochs=1"], [])

    def as_the_sweep_starts_it(plan, *extra):
        command, environment = worker_command(plan, 0, None)
        for name, value in environment.items():  # taken out of the environment by each worker
            monkeypatch.setenv(name, value)
        return command[3:] + list(extra)  # `worker --index 0 --no-validate`

    as_the_sweep_starts_it(sweep)
    worker.prepare_plan()
    ((key, prepared),) = worker._PREPARED.items()
    assert key == (tuple(sweep.command_line), ()) and composed  # composed once, there
    composed.clear()
    assert main([*as_the_sweep_starts_it(sweep), "--check"]) == 0
    assert checked == [prepared] and not composed  # from memory
    other = plan_sweep(["sweep.n_trials=4", "train.epochs=1"], [])
    composed.clear()
    assert main([*as_the_sweep_starts_it(other), "--check"]) == 0
    assert checked[-1] is not prepared and checked[-1].n_trials == 4 and composed
    validating = [arg for arg in as_the_sweep_starts_it(sweep) if arg != "--no-validate"]
    assert main([*validating, "--check"]) == 0
    assert checked[-1] is not prepared and len(composed) == 2


def held_at_its_first_load(tmp_path, monkeypatch) -> tuple[WarmServer, Path]:
    """A server whose first load lasts until the file `go` exists (helpers.warm_marks.when_told),
    then loads `warm`: what is asked of it meanwhile is read once that first load has ended."""
    go = tmp_path / "go"
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    monkeypatch.setenv("WARM_GO", str(go))
    return WarmServer(["helpers.warm_marks:when_told", "helpers.warm_marks:warm"]), go


def test_a_load_asked_for_comes_next_and_before_the_workers_asked_for_after_it(tmp_path, monkeypatch):
    """WarmServer.load: one more module (the sweep's trainer, named once its config is read) is
    loaded after the load under way and before the preloads not begun (torch, the longest, is
    what the trainer's check and the workers wait for), and before every worker asked for after
    it; once everything is loaded, at once."""
    server, go = held_at_its_first_load(tmp_path, monkeypatch)
    try:
        assert server.load("helpers.warm_marks:asked")  # read once the first load has ended
        assert server.start(0, REPORT, dict(os.environ), tmp_path / "loading.log")
        go.write_text("go")
        assert server.wait_exit(0, 300) == 0
        assert server.load("helpers.warm_marks:asked")  # every load done: it serves
        assert server.start(1, REPORT, dict(os.environ), tmp_path / "serving.log")
        assert server.wait_exit(1, 300) == 0
    finally:
        server.kill()
    assert (tmp_path / "loading.log").read_text().split() == ["told,asked,warm"]
    assert (tmp_path / "serving.log").read_text().split() == ["told,asked,warm,asked"]


def test_an_early_request_waits_for_the_loads_asked_for_before_it_not_for_the_preloads(tmp_path, monkeypatch):
    """The sweep's check of its trainer (early) is asked for after the trainer (WarmServer.load):
    it is forked once the trainer is loaded, before the preloads not begun; forked before it,
    it would import the trainer (torch) itself, beside the server."""
    server, go = held_at_its_first_load(tmp_path, monkeypatch)
    try:
        assert server.load("helpers.warm_marks:asked")  # all three read once the first load has ended
        assert server.start(0, REPORT, dict(os.environ), tmp_path / "early.log", early=True)
        assert server.start(1, REPORT, dict(os.environ), tmp_path / "worker.log")
        go.write_text("go")
        assert server.wait_exit(0, 300) == 0 and server.wait_exit(1, 300) == 0
    finally:
        server.kill()
    assert (tmp_path / "early.log").read_text().split() == ["told,asked"]
    assert (tmp_path / "worker.log").read_text().split() == ["told,asked,warm"]


@pytest.fixture
def servers_made(monkeypatch) -> list[WarmServer]:
    """Every warm server made from here on (sweeper.sweep.warm's, as early_server and the
    launchers make them)."""
    from sweeper.sweep import launchers, warm

    made: list[WarmServer] = []

    class Recorded(WarmServer):
        def __init__(self, preload):
            super().__init__(preload)
            made.append(self)

    monkeypatch.setattr(warm, "WarmServer", Recorded)
    monkeypatch.setattr(launchers, "WarmServer", Recorded)
    return made


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_a_sweep_starts_its_server_before_its_config_and_ends_it_unless_its_workers_take_it(workdir, servers_made, stand_in_sweep, capsys):
    """`sweeper sweep` starts its warm server first of all: a sweep refused on its config (or
    for its name) ends it, a dry run starts none, and a sweep's workers are forked from that
    one (no second server), which ends with them."""
    from sweeper.cli import main

    assert main(["sweep", "sweep.n_trials=many"]) == 2
    assert "sweep.n_trials" in capsys.readouterr().err
    assert len(servers_made) == 1 and not servers_made[0].alive()  # ended, and reaped
    assert main(["sweep", "--dry-run", *stand_in_sweep]) == 0
    assert len(servers_made) == 1
    argv = ["sweep", *stand_in_sweep, "sweep.n_trials=1", "sweep.workers=1", "sweep.live=false", "results_dir=results"]
    assert main(argv) == 0, capsys.readouterr()
    assert len(servers_made) == 2 and servers_made[1].taken
    servers_made[1].process.wait(timeout=60)  # its input closed by the sweep: it ended with its workers
    assert servers_made[1].process.returncode == 0
    assert list((workdir / "results").glob("sweeps/*/report.md"))  # the sweep ran through
