"""A real MLflow server for the tests (benchlib's, which the benchmarks start too), its command
line forked from a process that has loaded it (helpers.forked_cli)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import benchlib
from benchlib import free_port

from helpers.forked_cli import spawn

__all__ = ["MlflowServer", "free_port"]


class MlflowServer(benchlib.MlflowServer):
    """benchlib's MLflow server, whose stop() returns only once its port refuses connections: a
    test that stops it may count on it being out of reach (and on the port being free again).
    It may take up to 5 minutes to start, as on a loaded machine.

    `store`: a made empty store (conftest's empty_mlflow_store) to start from, copied into
    `folder`, where the server would make its own (its schema's migrations, ~1.4 s of a core in a new process)."""

    def __init__(self, folder: Path, port: int | None = None, store: Path | None = None) -> None:
        super().__init__(folder, port)
        if store is not None:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store, folder / "mlflow.db")

    def start(self, timeout: float = 300) -> MlflowServer:
        return super().start(timeout)

    def launch(self, command: list[str], env: dict[str, str]):
        # `python -m mlflow server ...` spends ~3 s of a core importing MLflow's command line
        # before it starts its worker (a process of its own, importing the server's app)
        return spawn(command, env, self.log, session=True)

    def stop(self) -> None:
        super().stop()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except ConnectionRefusedError:
                return
            except OSError:
                pass  # a timeout: nobody answered, not yet a refusal
            assert time.monotonic() < deadline, f"{self.url} still took connections 60 s after it was stopped"
            time.sleep(0.05)
