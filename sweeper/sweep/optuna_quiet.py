"""Optuna's noise that sweeper silences on purpose: warnings about features it relies on
knowingly, and INFO lines that repeat what the sweep says itself."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.exceptions import ExperimentalWarning


@contextmanager
def experimental_features_on_purpose() -> Iterator[None]:
    """Heartbeats, their retry callback and TPE's group option are "experimental" in Optuna;
    we rely on them knowingly, so their warnings would only be noise in every worker's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs "[I ...] A new study created in RDB with name: ..." at INFO into the sweep's
    output, which says so itself; its warnings and errors still show."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
