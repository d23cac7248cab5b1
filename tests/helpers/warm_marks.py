"""Warm-ups for the warm server's tests: what a warm-up did before the fork is seen by the
workers forked after it (`python -m helpers.warm_report` prints it)."""

from __future__ import annotations

WARMED: list[str] = []


def warm() -> None:
    WARMED.append("warm")


def fail() -> None:
    raise RuntimeError("a warm-up that fails")
