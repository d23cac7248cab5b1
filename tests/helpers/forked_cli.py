"""`python -m MODULE ARGS` and `python scripts/SCRIPT.py ARGS` for the tests, forked from a process
that has imported what they import.

The suite ran 104 `sweeper` processes, 12 benchmark scripts and 12 MLflow servers (a run that
logged every process at its exit), and each spent 0.6-3 s of a core importing the same modules
(Hydra, Optuna, SQLAlchemy, MLflow, matplotlib, pandas; torch for the scripts) and composing
the same default config before its work (a sweep's process 0.6 s without MLflow, 2.4 s with it
and the report's modules; MLflow's command line 3 s). Forked, the CPU the README's test command
takes fell from 840-847 s to 713-717 s (README: Tests and CI). A
test process starts a server (`python -m helpers.forked_cli`, `ForkServer`) that does that once;
each command is then forked from it and runs as the command line started in that folder with
that environment would: its argv, working directory, environment and sys.path as that command
line gives them, stdin empty, stdout and stderr to the files asked for, its exit code as
subprocess reports it (-N for signal N), in a session of its own if asked (Popen's
start_new_session).

The commands' server loads no torch: a sweep's own process never loads it
(tests/test_say_no_first.py), and what it records depends on whether it did
(sweeper.records.environment). The scripts' server loads torch and the trainer as a sweep's
warm server does before it forks its workers (sweeper.sweep.warm): nothing that must not cross a
fork. Tests about the process itself (signals sent to it, its argv, what it has loaded, the
console script, the packages it can import at its start) start it as a process of its own.

Protocol, one line each: a JSON request {"module" or "script", "argv", "cwd", "env", "stdout",
"stderr", "session"} on the server's stdin, answered on its stdout `started PID`; `exit PID
CODE` follows whenever that command ends (several may run at once). End of its stdin: the
server waits for its commands, then ends; it ends with the test process too.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import runpy
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ForkServer", "ForkedProcess", "popen", "run_script", "run_sweeper", "spawn"]

TESTS = Path(__file__).resolve().parents[1]
# What the commands' own processes import (none of them torch), and `mlflow server`'s command
# line (its workers are processes it starts itself).
COMMAND_LOADS = (
    "sweeper.commands.sweep",
    "sweeper.commands.sweeping",
    "sweeper.commands.confirm",
    "sweeper.commands.export",
    "sweeper.commands.report",
    "sweeper.commands.rerun",
    "sweeper.commands.train",
    "sweeper.commands.verdict",
    "sweeper.commands.worker",
    "sweeper.records.machine_recorder",
    "sweeper.analysis.report",
    "sweeper.analysis.live_report",
    "matplotlib.pyplot",
    "optuna.visualization.matplotlib",  # what a sweep's report thread imports as the trials begin
    "mlflow.cli",
)
# The scripts' (scripts/bench_*.py): the commands' and what a sweep's warm server loads.
SCRIPT_LOADS = (*COMMAND_LOADS, "sweeper.training.engine", "pandas", "benchlib")
LOADS = {"commands": COMMAND_LOADS, "scripts": SCRIPT_LOADS}


class ForkServer:
    """The test process's side: starts a server with LOADS[loads] loaded, forks commands from it."""

    def __init__(self, loads: str) -> None:
        path = [str(TESTS), str(TESTS.parent / "scripts"), os.environ.get("PYTHONPATH")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "helpers.forked_cli", str(os.getpid()), loads],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=TESTS.parent,
        )  # fmt: skip
        self._pending = b""
        self._asked: list[ForkedProcess] = []  # asked for, not yet said started (the server answers in order)
        self._running: dict[int, ForkedProcess] = {}  # by pid: a pid is the kernel's to give again once its process ended
        self.ended: list[ForkedProcess] = []  # in the order the server said they ended

    def spawn(
        self, command: Sequence[str], cwd: Path, env: dict[str, str] | None, stdout: Path, stderr: Path, session: bool = False
    ) -> ForkedProcess:
        """Start a command [python, -m, MODULE, ...] or [python, SCRIPT, ...] (see the module's doc)."""
        _, first, *rest = command
        what = {"module": rest[0], "argv": rest[1:]} if first == "-m" else {"script": str(Path(first).resolve()), "argv": rest}
        request = {**what, "cwd": str(Path(cwd).resolve()), "env": dict(os.environ if env is None else env),
                   "stdout": str(stdout), "stderr": str(stderr), "session": session}  # fmt: skip
        forked = ForkedProcess(self, stdout, stderr)
        self._asked.append(forked)
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        while forked.pid is None:
            self.read(None)
        return forked

    def run(self, command: Sequence[str], cwd: Path, env: dict[str, str] | None, timeout: float | None) -> subprocess.CompletedProcess:
        """What subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout) gives."""
        with tempfile.TemporaryDirectory(prefix="forked-") as folder:
            forked = self.spawn(command, cwd, env, Path(folder) / "stdout", Path(folder) / "stderr")
            try:
                out, err = forked.communicate(timeout)
            except subprocess.TimeoutExpired:
                forked.kill()
                raise subprocess.TimeoutExpired(list(command), timeout, *forked.communicate()) from None
            return subprocess.CompletedProcess(list(command), forked.returncode, out, err)

    def read(self, deadline: float | None) -> bool:
        """Take the server's answers that come by `deadline` (None: wait for one); False if none came."""
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([self.process.stdout], [], [], wait)
        if not ready:
            return False
        chunk = os.read(self.process.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"the fork server ended (exit code {self.process.wait()})")
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            said, pid, *code = line.decode().split()
            if said == "started":
                forked = self._asked.pop(0)
                forked.pid = int(pid)
                self._running[forked.pid] = forked
            else:
                forked = self._running.pop(int(pid))
                forked.returncode = int(code[0])
                self.ended.append(forked)
        return True

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkedProcess:
    """A forked command, as much of subprocess.Popen as the tests use: pid, returncode, poll,
    wait, send_signal, kill, and communicate (its output is in files: `stdout`, `stderr`)."""

    def __init__(self, server: ForkServer, stdout: Path, stderr: Path) -> None:
        self.server, self.stdout, self.stderr = server, stdout, stderr
        self.pid: int | None = None  # once the server said it started
        self.returncode: int | None = None  # once the server said it ended

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # as Popen: an ended process is sent nothing
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Its stdout and stderr once it has ended (subprocess.TimeoutExpired if it has not by then)."""
        self.wait(timeout)
        return self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace")

    def poll(self) -> int | None:
        while self.returncode is None and self.server.read(time.monotonic()):
            pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            if not self.server.read(deadline):
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
        return self.returncode


_SERVERS: dict[str, ForkServer] = {}  # this test process's, each started for its first command


def _server(loads: str) -> ForkServer:
    server = _SERVERS.get(loads)
    if server is None or server.process.poll() is not None:
        server = _SERVERS[loads] = ForkServer(loads)
        atexit.register(server.close)
    return server


def run_sweeper(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """`python -m sweeper.cli ARGS` as subprocess.run(capture_output=True, text=True) runs it."""
    return _server("commands").run([sys.executable, "-m", "sweeper.cli", *args], cwd, env, timeout)


def run_script(
    script: Path, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (a script of scripts/) as subprocess.run(capture_output=True, text=True) runs it."""
    return _server("scripts").run([sys.executable, str(script), *args], cwd, env, timeout)


def popen(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None, session: bool = False) -> ForkedProcess:
    """subprocess.Popen(command, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True,
    start_new_session=session) for `python -m sweeper.cli ...`: its output, read by
    communicate(), goes to files outside cwd (removed with the test process's temporary files)."""
    output = Path(tempfile.mkdtemp(prefix="forked-"))
    atexit.register(shutil.rmtree, output, True)
    return _server("commands").spawn(command, cwd, env, output / "stdout", output / "stderr", session)


def spawn(command: Sequence[str], env: dict[str, str], log: Path, session: bool = False, cwd: Path | None = None) -> ForkedProcess:
    """`python -m MODULE ...` started in `cwd` (default: the working directory), stdout and stderr to `log`."""
    return _server("commands").spawn(command, cwd or Path.cwd(), env, log, log, session)


# --- the server -------------------------------------------------------------------------------


def serve(parent: int, loads: Sequence[str]) -> int:
    """Load, then fork a command for each request and report its exit; in a forked command, run
    it and return its exit code. Returns 0 in the server once its input and its commands have ended."""
    from sweeper.collector import leave_loaded_alone
    from sweeper.sweep.lifeline import end_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the test process
    end_with_parent(parent)
    answers = os.dup(1)  # the commands' stdout is theirs
    base_path = _base_path()
    gc.disable()  # the server only imports: its objects are left out of the commands' collections
    for module in loads:
        __import__(module)
    from sweeper.config.compose import compose_config

    compose_config()  # the default config, composed once for every command (sweeper.config.compose)
    leave_loaded_alone()
    # An ended command wakes the loop at once: SIGCHLD writes a byte to this pipe.
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: set[int] = set()
    pending, ended = b"", False
    while not ended or running:
        ready, _, _ = select.select([woken] if ended else [0, woken], [], [])
        if woken in ready:
            os.read(woken, 4096)
        if 0 in ready:
            chunk = os.read(0, 1 << 16)
            ended = not chunk
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                request = json.loads(line)
                # `started` is said once the command is in its session and its output files
                # exist: as Popen returns (a test may signal its group, or read them, at once).
                settled, settle = os.pipe()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    if request["session"]:
                        os.setsid()
                    _standard_streams(request)
                    for fd in (answers, woken, wake, settled, settle):
                        os.close(fd)
                    return _command(request, base_path)
                os.close(settle)
                os.read(settled, 1)  # its end of the pipe closed
                os.close(settled)
                running.add(pid)
                os.write(answers, f"started {pid}\n".encode())
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            os.write(answers, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
    return 0


def _base_path() -> list[str]:
    """sys.path as a new interpreter builds it before its own entries: without the folder `-m`
    put first and without PYTHONPATH's."""
    own = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    return [p for p in sys.path[1:] if os.path.abspath(p) not in own]


def _standard_streams(request: dict) -> None:
    """In the forked command: stdin empty, stdout and stderr to the files asked for (one file for both if they are one)."""
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    out = os.open(request["stdout"], flags, 0o600)
    err = out if request["stderr"] == request["stdout"] else os.open(request["stderr"], flags, 0o600)
    for handle, fd in ((out, 1), (err, 2)):
        os.dup2(handle, fd)
    for handle in {out, err}:
        os.close(handle)


def _command(request: dict, base_path: list[str]) -> int:
    """In the forked command: become `python -m MODULE ARGV` or `python SCRIPT ARGV` started in
    its folder with its environment; the interpreter then ends as that command's would (threads
    joined, atexit run)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    given = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    script = request.get("script")
    # First on sys.path: the script's folder, or for `-m` the working directory.
    sys.path[:] = [os.path.dirname(script) if script else request["cwd"], *given, *base_path]
    gc.enable()
    if script:
        sys.argv = [script, *request["argv"]]
        runpy.run_path(script, run_name="__main__")
        return 0
    # As with `-m`: the module runs as __main__ (a package's __main__), and a module was not
    # loaded under its own name before; runpy puts its file in sys.argv[0].
    name = request["module"]
    if not hasattr(sys.modules.get(name), "__path__"):
        sys.modules.pop(name, None)
    sys.argv = [name, *request["argv"]]
    runpy.run_module(name, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), LOADS[sys.argv[2]]))
