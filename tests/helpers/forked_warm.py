"""A forked sweep's warm server, forked from the sweep's own process (WarmServer.launch).

The tests' sweeps are forked from a process that has loaded what a sweep's warm server loads
(helpers.forked_cli). Started as the product starts it, `python -m sweeper.sweep.warm`, the
server would load it all again in a new interpreter: ~1.3 s of a core for a stand-in trainer's
sweep, 126 servers in a run of the suite. Here the sweep's process forks it instead, while it is
one thread (the early server is the first thing `sweeper sweep` does; any later start, with
threads running, starts it as the product does), and the child runs the server's loop as
`python -m sweeper.sweep.warm ARGUMENT` would: requests on its stdin, answers on its stdout,
stderr to nothing, no other file descriptor open, signals at their defaults, and at its end the
interpreter's exit steps (sweeper.cli.exit_now: threads joined, atexit run).

What differs from the product's server is what such a process is seen to be: its argv and its
workers' (the fork server's), and the modules its workers have loaded (the commands' too, MLflow
among them). Tests about those set REAL_WARM_SERVER=1 in the sweep's environment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback

from sweeper.sweep.warm import WarmServer, serve

REAL_LAUNCH = WarmServer.launch


def install() -> None:
    """Every WarmServer of the processes forked from here from now on is forked (fork_server)."""
    WarmServer.launch = staticmethod(fork_server)


class ForkedServer:
    """What WarmServer uses of a Popen, for a child forked here: pid, stdin, stdout, poll, wait, kill."""

    def __init__(self, pid: int, stdin, stdout) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._wait(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:  # Popen's signature; only a kill's end is waited for
        return self._wait(0)

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def _wait(self, flags: int) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:  # reaped elsewhere: as Popen takes it
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def fork_server(argument: str):
    if os.environ.get("REAL_WARM_SERVER") or threading.active_count() > 1:
        return REAL_LAUNCH(argument)
    requests, to_server = os.pipe()
    from_server, answers = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing of the sweep's left in buffers the child would flush again
    pid = os.fork()
    if pid == 0:
        _serve(argument, requests, answers)  # never returns
    os.close(requests)
    os.close(answers)
    return ForkedServer(pid, os.fdopen(to_server, "wb"), os.fdopen(from_server, "rb"))


def _serve(argument: str, requests: int, answers: int) -> None:
    """In the child: become `python -m sweeper.sweep.warm ARGUMENT`, then end as it would."""
    from sweeper.cli import exit_now

    code = 1
    try:
        os.dup2(requests, 0)
        os.dup2(answers, 1)
        nothing = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nothing, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # as Popen's close_fds
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)  # as exec leaves them
        sys.stdin, sys.stdout, sys.stderr = (open(fd, mode, closefd=False) for fd, mode in ((0, "r"), (1, "w"), (2, "w")))
        parent, modules = json.loads(argument)
        job = serve(os.fdopen(0, "rb", buffering=0, closefd=False), os.fdopen(1, "wb", buffering=0, closefd=False), parent, modules)
        code = job() if job is not None else 0
    except SystemExit as stop:  # a worker's end, as `sys.exit` gives it
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int) and stop.code is not None:
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:  # as the interpreter ends on one: by the signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - as the interpreter says an uncaught error: its traceback, exit 1
        traceback.print_exc()
        code = 1
    exit_now(code)
