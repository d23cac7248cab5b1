"""The rules for single settings: one helper for "whole number >= k" and one for "seconds > 0",
both refusing bools (YAML's true is a bool, and Python's bool is an int)."""

from __future__ import annotations

import logging
import math

import pytest

from sweeper.config import ConfigError
from sweeper.config import rules as settings
from sweeper.config.rules import seconds, warn_oversubscribed, whole


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [(0, {}), (3, {"minimum": 1}), ("auto", {"auto": True}), (None, {"null": ""}), (None, {"null": "for none"})],
)
def test_whole_passes_what_it_allows(value, kwargs):
    assert whole("x.n", value, **kwargs) == value


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (True, {"minimum": 1}, "x.n: True must be a whole number >= 1, e.g. x.n=1."),  # not 1 trial
        (False, {}, "x.n: False must be a whole number >= 0, e.g. x.n=1."),
        (0, {"minimum": 1}, "x.n: 0 must be a whole number >= 1, e.g. x.n=1."),
        (2.0, {}, "x.n: 2.0 must be a whole number >= 0, e.g. x.n=1."),
        ("3", {}, "x.n: '3' must be a whole number >= 0, e.g. x.n=1."),
        (None, {}, "x.n: None must be a whole number >= 0, e.g. x.n=1."),
        ("many", {"minimum": 1, "auto": True}, "x.n: 'many' must be auto or a whole number >= 1, e.g. x.n=1."),
        (0, {"minimum": 1, "null": "for n_trials"}, "x.n: 0 must be a whole number >= 1, or null for n_trials, e.g. x.n=1."),
        (0.5, {"minimum": 1, "unit": "whole seconds", "example": 10}, "x.n: 0.5 must be whole seconds >= 1, e.g. x.n=10."),
    ],
)
def test_whole_refuses_with_the_setting_and_an_example(value, kwargs, message):
    with pytest.raises(ConfigError) as refused:
        whole("x.n", value, **kwargs)
    assert str(refused.value) == message


@pytest.mark.parametrize("value", [0.5, 3, 1e9])
def test_seconds_passes_positive_finite_numbers(value):
    assert seconds("x.t", value) == value


@pytest.mark.parametrize("value", [True, 0, -1, math.inf, math.nan, "10", None])
def test_seconds_refuses_anything_else(value):
    with pytest.raises(ConfigError, match=r"x\.t: .* must be seconds > 0, e\.g\. x\.t=10\."):
        seconds("x.t", value)


def test_seconds_may_allow_null():
    assert seconds("x.t", None, null="for none") is None
    with pytest.raises(ConfigError, match="or null for none"):
        seconds("x.t", 0, null="for none")


def test_far_more_workers_than_cores_warns_once_with_the_figures(caplog):
    settings._warn_once.cache_clear()  # once per process: forget any earlier warning
    with caplog.at_level(logging.WARNING, logger="sweeper.config.rules"):
        for _ in range(3):  # the launcher plans its slots several times
            warn_oversubscribed(1000, 2)
        warn_oversubscribed(4, 2)  # twice the cores: fine
        warn_oversubscribed("auto", 2)
    (record,) = caplog.records
    assert "sweep.workers=1000 is 500 times this machine's 2 cores" in record.getMessage()
    assert "sweep.workers=2 (or auto)" in record.getMessage()
