"""Warm workers: a sweep's local workers forked from a process that has already imported what a
trial needs.

A worker started from scratch spends seconds importing torch, Optuna, MLflow and the trainer
before its first trial, and every worker of a machine does so at once, on the same cores. The
sweep instead starts one server at once (`python -m sweeper.sweep.warm`), which imports them a
single time while the sweep checks itself; each worker is then forked from it (copy-on-write, a
few milliseconds) and runs `sweeper worker` as a started process would, with its own
environment, working directory and log.

What must not cross a fork stays out of the server: it imports modules and opens nothing (no
study, no SQLite or MLflow connection, no thread of its own; torch starts its thread pools at its
first operation and CUDA at its first use, both in the worker). A worker's environment is set
after the fork, before any of that happens, and torch is told its share of threads then.

The server and its workers stay in the sweep's process group (Ctrl-C reaches them all: the
server ignores it, the workers stop as they do). The server ends with the sweep (the parent
death signal), and the workers with the server, so a killed sweep leaves nothing running.

`sweeper sweep` starts its server first of all (`early_server`), before it has read its config:
the server loads what every sweep's workers need (FIRST_LOADS) while the sweep's own process
imports and checks, and is told the trainer to load once the config names it. A sweep that
does not fork its workers from it (refused, a dry run, cluster jobs, launcher.warm=false) ends
it.

Protocol, one line each: the sweep writes a JSON request per worker to the server's stdin
({"index", "module", "argv", "env", "log", "early"}: the worker runs as `python -m MODULE ARGV`
would); the server answers on its stdout `started INDEX PID` and, once that worker has ended,
`exit PID CODE` (CODE as subprocess reports it: -N for signal N). A request {"load"} is one more
module to load (before the preloads not begun yet), before any worker asked for after it is
forked. A request {"call", "env", "early"} is a function the server calls itself with that
environment, answered by nothing: what it prepares (the sweep's plan) is in every worker forked
after it. End of its stdin: the server waits for its workers, then ends.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from sweeper.collector import leave_loaded_alone
from sweeper.sweep.lifeline import end_with_parent

__all__ = ["FIRST_LOADS", "WarmServer", "can_fork_workers", "early_server", "serve"]

REAP_SECONDS = 0.05  # how often the server looks for ended workers between requests
# What the workers of every sweep load, whichever its trainer (not MLflow: the workers hand their
# records to the sweep's recorder, sweeper.records.spool). The trainer, asked for once the sweep
# has read its config, comes before those not loaded yet: torch, for sweeper's own, is the
# longest load, and the trainer's check and the workers wait for it.
FIRST_LOADS = (
    "sweeper.commands.worker",
    "sweeper.records.tracking",
    "sweeper.commands.worker:warm_up_study",
    "sweeper.commands.worker:warm_up_config",
)


def can_fork_workers() -> bool:
    """Whether workers can be forked from a server here: Linux, whose parent-death signal ends
    the server with its sweep (prctl, sweeper.sweep.lifeline); elsewhere they start cold."""
    return sys.platform.startswith("linux")


@contextlib.contextmanager
def early_server(wanted: bool) -> Iterator[WarmServer | None]:
    """A server started now, before the sweep has read its config, loading FIRST_LOADS while the
    sweep's process imports and checks (about half a second sooner than a server started once
    the config is read, on a sweep's way to its first trial). Killed on the way out unless the
    sweep's workers took it (`WarmServer.take`): a refusal, a dry run or cluster jobs fork
    nothing from it."""
    server = WarmServer(FIRST_LOADS) if wanted and can_fork_workers() else None
    try:
        yield server
    finally:
        if server is not None and not server.taken:
            server.kill()


class WarmServer:
    """The sweep's side of the server: starts it, asks it for workers, follows their exits."""

    def __init__(self, preload: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sweeper.sweep.warm", json.dumps([os.getpid(), list(preload)])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.taken = False  # by a sweep's workers: they end it (see early_server)
        self._pids: dict[int, int] = {}  # worker index -> pid
        self._exits: dict[int, int] = {}  # pid -> exit code
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="warm server", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def take(self) -> WarmServer:
        """The sweep's workers will be forked from this server: they end it, not early_server."""
        self.taken = True
        return self

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, index: int, command: Sequence[str], env: dict[str, str], log: Path, *, early: bool = False) -> bool:
        """Ask for worker `index`, to run `command` (`python -m MODULE ARGS...`, as a started worker
        would); False when the server is gone (the caller starts the worker cold). `early`: it
        may be forked before the server has loaded everything (it needs only the loads asked for)."""
        python, option, module, *argv = command
        if option != "-m":
            raise ValueError(f"the warm server runs modules (python -m MODULE ...), not {list(command)}")
        return self._ask({"index": index, "module": module, "argv": argv, "env": env, "log": str(log), "early": early})

    def load(self, name: str) -> bool:
        """Ask the server to load one more module (or `module:function`, as a preload), next
        after the load under way (before the preloads not begun, after those asked for before):
        every worker asked for after this waits for it, an early request too (not for the preloads)."""
        return self._ask({"load": name})

    def prepare(self, function: str, env: dict[str, str]) -> bool:
        """Ask the server to call `module:function` itself, between two of its loads, with the
        environment `env` (a worker's): what it prepares in memory, every worker forked after
        it has (the sweep's plan, composed once instead of by each worker). Its failure is
        nobody's: the workers then do the same work again, and say what fails."""
        return self._ask({"call": function, "env": env, "early": True})

    def _ask(self, request: dict) -> bool:
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def worker_pid(self, index: int) -> int | None:
        """The worker's pid, waiting for the server to fork it; None if the server ended first."""
        with self._changed:
            self._changed.wait_for(lambda: index in self._pids or not self._reader.is_alive())
            return self._pids.get(index)

    def exit_code(self, index: int) -> int | None:
        """None while worker `index` runs (or waits to be forked); then its exit code. A worker
        whose server died first is taken as failed (1): the server's death ended it too."""
        with self._changed:
            pid = self._pids.get(index)
            if pid is not None and pid in self._exits:
                return self._exits[pid]
            return None if self._reader.is_alive() else 1

    def wait_exit(self, index: int, timeout: float) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: self.exit_code(index) is not None, timeout)
            return self.exit_code(index)

    def close(self) -> None:
        """No more workers: the server ends once those it forked have ended."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass

    def kill(self) -> None:
        """End the server before it forked anything (a sweep that stops before it begins)."""
        self.process.kill()
        self.process.wait()
        self.close()

    def _read(self) -> None:
        for line in self.process.stdout:
            word, *numbers = line.split()
            with self._changed:
                if word == b"started":
                    index, pid = map(int, numbers)
                    self._pids[index] = pid
                elif word == b"exit":
                    pid, code = map(int, numbers)
                    self._exits[pid] = code
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()


# --- the server -------------------------------------------------------------------------------


def serve(requests: IO[bytes], answers: IO[bytes], sweep: int, preload: Sequence[str]) -> Callable[[], int] | None:
    """The server's loop. Returns None in the server once its input has ended and its workers
    with it; in a forked worker it returns that worker's job, for the caller to run and exit
    with (the interpreter then ends as a started process does: threads joined, atexit run).

    A request marked `early` that comes while the server is still loading is served between two
    loads, once those asked for (`load`: the sweep's trainer) are done: the sweep's check of its
    trainer needs the trainer, not the warm-ups; forked before it, the check imported torch
    itself beside the server. The others wait for every load."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the sweep and its workers
    end_with_parent(sweep)
    # The server only imports: no collection runs here, and what it loaded is left out of the
    # workers' (which would otherwise walk, and copy, every page they share with it).
    gc.disable()
    serving = _Serving(requests, answers, preload)
    while serving.loads or serving.waiting or serving.early or not serving.ended:
        if serving.loads:
            _load(serving.next_load())
        job = serving.fork_waiting()
        if job is None:
            job = serving.step(0 if serving.loads else REAP_SECONDS)
        if job is not None:
            return job
    _reap(answers, serving.running, block=True)
    return None


class _Serving:
    """The modules left to load, the requests read so far, the workers forked and not yet reaped."""

    def __init__(self, requests: IO[bytes], answers: IO[bytes], loads: Sequence[str]) -> None:
        self.requests, self.answers = requests, answers
        self.loads = list(loads)
        self.asked = 0  # of the loads left, how many at their head were asked for (WarmServer.load)
        self.running: set[int] = set()
        self.pending = b""  # read, not yet a whole line
        self.waiting: list[dict] = []  # requests read while loading, to fork once loaded
        self.early: list[dict] = []  # early requests, to serve once the loads asked for are done
        self.ended = False  # the sweep closed the server's input

    def next_load(self) -> str:
        self.asked = max(0, self.asked - 1)
        return self.loads.pop(0)

    def step(self, timeout: float) -> Callable[[], int] | None:
        """Take what was asked for within `timeout`: a load joins the loads; while any is left,
        only the early requests are served, once the loads asked for before them are done (the
        sweep's trainer, which its check needs), and the others wait; then reap ended workers.
        In a forked worker, its job."""
        ready, _, _ = select.select([self.requests], [], [], timeout)
        if ready:
            chunk = os.read(self.requests.fileno(), 1 << 16)
            self.ended = not chunk
            *lines, self.pending = (self.pending + chunk).split(b"\n")
            for line in lines:
                request = json.loads(line)
                if "load" in request:
                    self.loads.insert(self.asked, request["load"])
                    self.asked += 1
                else:
                    (self.early if request.get("early") else self.waiting).append(request)
                    job = self.fork_waiting()  # at once, if what it waits for is loaded
                    if job is not None:
                        return job
        _reap(self.answers, self.running, block=False)
        return None

    def fork_waiting(self) -> Callable[[], int] | None:
        """Serve the early requests once the loads asked for are done, the others once every load is."""
        for queue, ready in ((self.early, not self.asked), (self.waiting, not self.loads)):
            while ready and queue:
                job = self._serve(queue.pop(0))
                if job is not None:
                    return job
        return None

    def _serve(self, request: dict) -> Callable[[], int] | None:
        """A call here (WarmServer.prepare), or a worker forked: in that worker, its job."""
        if "call" in request:
            _call_as_worker(request["call"], request["env"])
            return None
        return _fork(request, self.answers, self.running)


def _load(name: str) -> None:
    """Import a module (or the module an attribute is in), or call `module:function` (a warm-up
    that leaves nothing open); a failure is the worker's to report."""
    module, _, function = name.partition(":")
    if function:
        try:
            getattr(importlib.import_module(module), function)()
        except Exception:  # noqa: BLE001 - the worker does the same work again and says what failed
            pass
        return
    for candidate in (name, name.rpartition(".")[0]):
        try:
            importlib.import_module(candidate)
            return
        except Exception:  # noqa: BLE001, S112 - the worker imports it again and says what failed
            continue


def _call_as_worker(function: str, env: dict[str, str]) -> None:
    """Call `module:function` here with a worker's environment, then put the server's back.
    Anything it prints goes to the server's stderr: its stdout carries the answers."""
    own = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            _load(function)
    finally:
        os.environ.clear()
        os.environ.update(own)


def _fork(request: dict, answers: IO[bytes], running: set[int]) -> Callable[[], int] | None:
    leave_loaded_alone()
    pid = os.fork()
    if pid == 0:
        gc.enable()  # the worker collects what it makes
        return lambda: _worker(request)
    running.add(pid)
    answers.write(f"started {request['index']} {pid}\n".encode())
    answers.flush()
    return None


def _reap(answers: IO[bytes], running: set[int], block: bool) -> None:
    while running:
        pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        running.discard(pid)
        answers.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
        answers.flush()


def _worker(request: dict) -> int:
    """In the forked worker: become `python -m MODULE ARGV` with the request's environment and log."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)
    os.close(nothing)
    os.environ.clear()
    os.environ.update(request["env"])
    torch = sys.modules.get("torch")
    threads = request["env"].get("OMP_NUM_THREADS")
    if torch is not None and threads:  # read by torch at its import, which happened in the server
        torch.set_num_threads(int(threads))
    # What `python -m MODULE ARGS` does, in this process: the module runs as __main__ and ends
    # with SystemExit, as the command would.
    sys.argv = [request["module"], *request["argv"]]
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    parent, modules = json.loads(sys.argv[1])
    job = serve(sys.stdin.buffer, sys.stdout.buffer, parent, modules)
    sys.exit(job() if job is not None else 0)
