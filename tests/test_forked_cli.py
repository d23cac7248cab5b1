"""The tests' fork server (helpers.forked_cli) against the command lines it stands in for: a
command forked from it sees what the same command line started by subprocess sees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers.forked_cli import ForkServer

# What a command sees of how it was started; it says something on each stream and exits 3.
SHOW = """
import json, os, sys
seen = {"argv": sys.argv[1:], "argv0": os.path.basename(sys.argv[0]), "cwd": os.getcwd(), "path0": sys.path[0],
        "given": os.environ.get("GIVEN"), "stdin": sys.stdin.read(), "session": os.getsid(0) == os.getpid(),
        "main": __name__, "on_path": [p for p in sys.path if p.endswith("on-path")]}
print(json.dumps(seen))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture(scope="module")
def server():
    started = ForkServer("commands")
    yield started
    started.close()


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "module"])
def test_a_forked_command_sees_what_a_started_one_sees(server, tmp_path, as_module):
    (tmp_path / "show_me.py").write_text(SHOW)
    (tmp_path / "on-path").mkdir()
    env = {**os.environ, "GIVEN": "value", "PYTHONPATH": str(tmp_path / "on-path")}
    command = [sys.executable, *(["-m", "show_me"] if as_module else [str(tmp_path / "show_me.py")]), "a", "b c"]
    started = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    forked = server.run(command, tmp_path, env, timeout=60)
    assert started.returncode == forked.returncode == 3
    assert started.stdout == forked.stdout and started.stderr == forked.stderr == "to stderr\n"
    assert '"given": "value"' in forked.stdout and '"argv": ["a", "b c"]' in forked.stdout


def test_a_forked_command_in_a_session_of_its_own_ends_with_its_group(server, tmp_path):
    log = tmp_path / "log"
    forked = server.spawn([sys.executable, "-m", "http.server", "0"], tmp_path, None, log, log, session=True)
    assert log.exists()  # as Popen's output file: there when it returns
    assert forked.poll() is None
    os.killpg(forked.pid, signal.SIGTERM)  # its group is its own: the server is not in it
    assert forked.wait(60) == -signal.SIGTERM
    assert server.process.poll() is None


def test_a_command_past_its_timeout_is_killed_as_subprocess_kills_it(server, tmp_path):
    (tmp_path / "hang.py").write_text("import threading\nthreading.Event().wait()\n")
    (tmp_path / "quick.py").write_text("")
    before = len(server.ended)
    with pytest.raises(subprocess.TimeoutExpired):
        server.run([sys.executable, str(tmp_path / "hang.py")], tmp_path, None, timeout=1)
    assert [forked.returncode for forked in server.ended[before:]] == [-signal.SIGKILL]
    assert server.run([sys.executable, str(tmp_path / "quick.py")], tmp_path, None, timeout=60).returncode == 0
