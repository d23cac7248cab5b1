"""Files through which a test paces the trials of sweep workers (other processes)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class Gates:
    """Files through which a test paces the trials of sweep workers (other processes), instead of
    guessing with sleeps. Set TRIAL_GATES to a folder to use them; every wait gives up after
    LIMIT seconds, so a test whose gate never opens fails instead of hanging.

    Each trial that begins training takes the next ticket (files ticket-0, ticket-1, ...: the
    order trials began, whichever worker runs them). Then, from the environment:
    TRIAL_BARRIER=n        the first n tickets wait until n trials have begun: n workers each
                           hold one trial at the same moment (all of them take part);
    TRIAL_WAIT_FOR=2:a,4:b tickets from 2 on wait for the file `a`, from 4 on for `b` too (the
                           test creates them when it has done what comes before);
    TRIAL_HOLD_AFTER=k     trials past the first k hold after their first epoch (GatedTrainer:
                           when their second epoch's first steps are reported, the first
                           epoch's checkpoint written), each writing held-<i> (i = 0, 1, ...:
                           the order they began holding; its text is the worker's pid), until
                           the file `release` appears or their worker is asked to stop (Ctrl-C);
    TRIAL_HOLD_MAX=m       at most m trials hold (the others run through).
    """

    LIMIT = 900.0  # seconds: only a gate that never opens comes near it
    POLL = 0.02

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls) -> Gates | None:
        folder = os.environ.get("TRIAL_GATES")
        return cls(Path(folder)) if folder else None

    def _claim(self, prefix: str, stop: float = math.inf) -> int | None:
        """The first free `prefix-<i>` (i < stop), created with this pid in it, or None."""
        index = 0
        while index < stop:
            try:
                descriptor = os.open(self.folder / f"{prefix}-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                index += 1
                continue
            os.write(descriptor, str(os.getpid()).encode())
            os.close(descriptor)
            return index
        return None

    def wait(self, ready: Callable[[], bool], what: str, stop: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + self.LIMIT
        while not ready() and not stop():
            if time.monotonic() > deadline:
                raise RuntimeError(f"test gate: waited {self.LIMIT:.0f}s in vain for {what}")
            time.sleep(self.POLL)

    def enter(self) -> int:
        """Take this trial's ticket and wait at the gates it must pass before training."""
        ticket = self._claim("ticket")
        barrier = int(os.environ.get("TRIAL_BARRIER", "0"))
        if ticket < barrier:
            last = self.folder / f"ticket-{barrier - 1}"
            self.wait(last.exists, f"{barrier} trials to begin")
        for gate in filter(None, os.environ.get("TRIAL_WAIT_FOR", "").split(",")):
            start, _, name = gate.partition(":")
            if ticket >= int(start):
                self.wait((self.folder / name).exists, f"the file {name}")
        return ticket

    def hold(self, ticket: int, reporters: Sequence) -> None:
        """Hold here (TRIAL_HOLD_AFTER, TRIAL_HOLD_MAX) until released or asked to stop."""
        after = os.environ.get("TRIAL_HOLD_AFTER")
        if after is None or ticket < int(after):
            return
        if self._claim("held", stop=float(os.environ.get("TRIAL_HOLD_MAX", "inf"))) is None:
            return
        from sweeper.sweep.workers import StopRequest

        stops = [r for r in reporters if isinstance(r, StopRequest)]
        release = self.folder / "release"
        self.wait(release.exists, "the file release", stop=lambda: any(s.requested for s in stops))
