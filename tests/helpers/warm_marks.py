"""Warm-ups for the warm server's tests: what a warm-up did before the fork is seen by the
workers forked after it (`python -m helpers.warm_report` prints it)."""

from __future__ import annotations

WARMED: list[str] = []


def warm() -> None:
    WARMED.append("warm")


def fail() -> None:
    raise RuntimeError("a warm-up that fails")


def after_the_early_one() -> None:
    """A slow load: it lasts until a request served early (between two loads) has run and
    written the file EARLY_DONE names (WARM_WAIT_LIMIT seconds at most: a server that serves no
    request before it has loaded everything waits that long, and its workers say "late")."""
    import os
    from pathlib import Path

    from helpers.waiting import wait_for_file

    try:
        wait_for_file(Path(os.environ["EARLY_DONE"]), timeout=float(os.environ.get("WARM_WAIT_LIMIT", "60")))
    except AssertionError:
        WARMED.append("late")
    else:
        WARMED.append("after-early")


def mark_from_environment() -> None:
    """A call the server makes with a worker's environment (WarmServer.prepare): WARM_MARK there."""
    import os

    WARMED.append(os.environ.get("WARM_MARK", "unmarked"))


def when_told() -> None:
    """A load that lasts until the file WARM_GO names exists (the test's word; 60 s at most)."""
    import os
    from pathlib import Path

    from helpers.waiting import wait_for_file

    wait_for_file(Path(os.environ["WARM_GO"]), timeout=60)
    WARMED.append("told")


def asked() -> None:
    """A load the server is asked for (WarmServer.load)."""
    WARMED.append("asked")
