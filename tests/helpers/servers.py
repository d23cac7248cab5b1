"""A real MLflow server for the tests (benchlib's, which the benchmarks start too)."""

from __future__ import annotations

import socket
import time

import benchlib
from benchlib import free_port

__all__ = ["MlflowServer", "free_port"]


class MlflowServer(benchlib.MlflowServer):
    """benchlib's MLflow server, whose stop() returns only once its port refuses connections: a
    test that stops it may count on it being out of reach (and on the port being free again).
    It may take up to 5 minutes to start, as on a loaded machine."""

    def start(self, timeout: float = 300) -> MlflowServer:
        return super().start(timeout)

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
