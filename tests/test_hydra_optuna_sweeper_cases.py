"""hydra-optuna-sweeper's own override and config cases, read by our grammar.

Ported from facebookresearch/hydra, plugins/hydra_optuna_sweeper/tests/test_optuna_sweeper_plugin.py
(`test_create_optuna_distribution_from_override`, `test_create_params_from_overrides` and
`test_create_optuna_distribution_from_config`), with its expected values kept beside ours. Where
they differ it is always the end of a range: the plugin hands Hydra's end to Optuna as `high`,
which Optuna includes, so there `range(1, 3)` draws 3 and `interval(1, 5)` can draw 5, although
Hydra's own grammar (and its basic sweeper) stops short of both. We keep Hydra's meaning.
"""

from __future__ import annotations

import math

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeper.config import ConfigError
from sweeper.sweep.space import parse_dimension, split_overrides

BELOW_5 = math.nextafter(5.0, 0.0)  # the largest float under an exclusive end of 5


def read(override: str):
    key, _, value = override.partition("=")
    return parse_dimension(f"search.params.{key}", key, key, value)


# (override, the plugin's distribution, ours)
OVERRIDES = [
    ("key=choice(1,2)", CategoricalDistribution([1, 2]), CategoricalDistribution([1, 2])),
    ("key=choice(true, false)", CategoricalDistribution([True, False]), CategoricalDistribution([True, False])),
    ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"]), CategoricalDistribution(["hello", "world"])),
    # The plugin's choices come in shuffled order (its test compares them as a set); ours keep the
    # written order, so every worker of a sweep builds the same distribution.
    ("key=shuffle(range(1,3))", CategoricalDistribution([1, 2]), CategoricalDistribution([1, 2])),
    # Differs: Hydra lists 1, 2 for range(1,3); the plugin's IntDistribution(1, 3) also draws 3.
    ("key=range(1,3)", IntDistribution(1, 3), IntDistribution(1, 2)),
    # Differs: the plugin can draw 5.0 itself; ours stops at the float just below it.
    ("key=interval(1, 5)", FloatDistribution(1, 5), FloatDistribution(1, BELOW_5)),
    # Differs: the plugin draws 1..5; ours 1..4 (write int(interval(1, 6)) for 1..5).
    ("key=int(interval(1, 5))", IntDistribution(1, 5), IntDistribution(1, 4)),
    ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True), FloatDistribution(1, BELOW_5, log=True)),
    ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True), IntDistribution(1, 4, log=True)),
    # Differs: Hydra lists 0.5, 1.5, ..., 4.5; the plugin's FloatDistribution also draws 5.5.
    ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1), FloatDistribution(0.5, 4.5, step=1)),
]


@pytest.mark.parametrize(("override", "theirs", "ours"), OVERRIDES, ids=[o for o, *_ in OVERRIDES])
def test_an_override_reads_into_hydras_values(override, theirs, ours):
    assert read(override).distribution == ours
    if not isinstance(ours, CategoricalDistribution):
        return
    # choices: the same values as the plugin's, and every value Hydra itself would run
    assert set(ours.choices) == set(theirs.choices)
    parsed = OverridesParser.create().parse_override(override)
    assert set(ours.choices) == set(parsed.sweep_iterator())


DIFFERENT = [case for case in OVERRIDES if case[1] != case[2]]


@pytest.mark.parametrize(("override", "theirs", "ours"), DIFFERENT, ids=[o for o, *_ in DIFFERENT])
def test_where_the_plugin_differs_only_its_inclusive_end_is_out(override, theirs, ours):
    assert (theirs.low, theirs.step) == (ours.low, ours.step) and ours.high < theirs.high
    # the plugin's high is exactly the end written in the override, which Hydra never reaches
    assert not ours._contains(ours.to_internal_repr(theirs.high))


@pytest.mark.parametrize(
    ("overrides", "sweeps", "plain"),
    [
        (["key=choice(1,2)"], {"key": "choice(1,2)"}, []),
        (["key=5"], {}, ["key=5"]),
        (["key1=choice(1,2)", "key2=5"], {"key1": "choice(1,2)"}, ["key2=5"]),
        (["key1=choice(1,2)", "key2=5", "key3=range(1,3)"], {"key1": "choice(1,2)", "key3": "range(1,3)"}, ["key2=5"]),
    ],
)
def test_overrides_split_into_the_space_and_fixed_settings(overrides, sweeps, plain):
    assert split_overrides(overrides) == (plain, sweeps)


# The plugin's older `search_space` entries (its test_create_optuna_distribution_from_config),
# refused here with the grammar that draws what the entry drew: its high was inclusive, so the
# grammar's exclusive end sits one past it, except for a continuous float, where only the end
# value itself, drawn with probability zero, is left out.
CONFIG_ENTRIES = [
    ({"type": "categorical", "choices": [1, 2, 3]}, "choice(1, 2, 3)"),
    ({"type": "int", "low": 0, "high": 10}, "int(interval(0, 11))"),
    ({"type": "int", "low": 0, "high": 10, "step": 2}, "range(0, 12, 2)"),
    ({"type": "int", "low": 0, "high": 5}, "int(interval(0, 6))"),
    ({"type": "int", "low": 1, "high": 100, "log": True}, "tag(log, int(interval(1, 101)))"),
    ({"type": "float", "low": 0, "high": 1}, "interval(0.0, 1.0)"),
    ({"type": "float", "low": 0, "high": 10, "step": 2}, "range(0.0, 11.0, 2.0)"),
    ({"type": "float", "low": 0, "high": 1, "step": 0.1}, "range(0.0, 1.05, 0.1)"),  # not 1.1: Hydra would list it
    ({"type": "float", "low": 1, "high": 100, "log": True}, "tag(log, interval(1.0, 100.0))"),
]


@pytest.mark.parametrize(("entry", "grammar"), CONFIG_ENTRIES, ids=[g for _, g in CONFIG_ENTRIES])
def test_an_older_config_entry_is_refused_with_the_grammar_to_write(entry, grammar):
    with pytest.raises(ConfigError) as refused:
        parse_dimension("search.params.x", "x", "x", entry)
    message = str(refused.value)
    assert message.startswith("search.params.x: ") and "older search_space form" in message
    assert f"search.params.x='{grammar}'" in message
    assert "exclusive" in message or entry["type"] == "categorical"


@pytest.mark.parametrize(("entry", "grammar"), CONFIG_ENTRIES, ids=[g for _, g in CONFIG_ENTRIES])
def test_the_grammar_given_draws_what_the_entry_drew(entry, grammar):
    ours = read(f"x={grammar}").distribution
    if entry["type"] == "categorical":
        assert list(ours.choices) == entry["choices"]
        return
    assert ours.low == entry["low"] and bool(ours.log) == bool(entry.get("log"))
    if entry["type"] == "int" or "step" in entry:
        assert ours.high == entry["high"] and ours.step == entry.get("step", 1)  # the old high is in
    else:
        assert ours.high == math.nextafter(entry["high"], 0.0)  # all but the end value itself
