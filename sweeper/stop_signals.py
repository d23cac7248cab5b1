"""Ctrl-C (SIGINT) and SIGTERM, as every command hears them.

    with StopSignals() as stop:       # the command's main thread (sweeper.cli)
        ...                           # KeyboardInterrupt wherever the main thread is
    raise_if_stopped()                # a loop that waits: the stop, should the raise have been lost

A signal's handler raises KeyboardInterrupt wherever the main thread is, and there Python may
swallow it: inside a weakref callback or a __del__ it only prints "Exception ignored in ..." and
goes on (a sweep then kept waiting for workers that waited for it). So the signal is also kept,
and the loops that wait look at it.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopSignals", "raise_if_stopped"]


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (kill, a cluster scheduler, systemd) stop a command the same
    way: KeyboardInterrupt in its main thread, which the commands handle (a sweep stops its
    workers, who mark their trials failed and send their records; `sweeper train` ends its run).
    The signal is kept for the exit code: 128 + its number, as a shell reports a process the
    signal ended (130, 143), so a caller can tell Ctrl-C from a kill. A command may handle the
    signals its own way while it runs (a worker only sets a flag); the handlers are restored
    when it returns."""

    active: StopSignals | None = None  # the command's, while it runs

    def __init__(self) -> None:
        self.received: int | None = None
        self.acted_on = False  # whether a KeyboardInterrupt of raise_if_stopped's was raised
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # the only thread signals reach
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._interrupt)
            StopSignals.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if StopSignals.active is self:
            StopSignals.active = None

    def _interrupt(self, signum: int, frame: object) -> None:
        self.received = signum
        raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)

    @property
    def what(self) -> str:
        return "interrupted" if self.received in (None, signal.SIGINT) else f"stopped by {signal.Signals(self.received).name}"


def raise_if_stopped() -> None:
    """KeyboardInterrupt if a signal asked the command to stop and its own KeyboardInterrupt was
    lost (see the module doc); once only, so that the command's handling of the stop (a sweep
    stopping its workers) is not stopped again."""
    stop = StopSignals.active
    if stop is not None and stop.received is not None and not stop.acted_on:
        stop.acted_on = True
        raise KeyboardInterrupt
