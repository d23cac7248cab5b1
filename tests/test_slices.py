"""Slices against fastai itself (tests/data/fastai_one_cycle.json, computed with fastai 2.8.12) and every form a user types."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sweeper.schedules.slices import SliceError, SliceSpec, even_mults, parse_lr, peak_lrs

VECTORS = json.loads((Path(__file__).parent / "data" / "fastai_one_cycle.json").read_text())


def spec_from_vector(spec: str) -> object:
    """The lr a fastai user passed, from the vector file's spec name."""
    kind, _, rest = spec.partition("_")
    if kind == "float":
        return float(rest)
    if rest.startswith("hi_"):
        return slice(float(rest[3:]))
    low, high = rest.split("_")
    return slice(float(low), float(high))


def assert_close_list(actual: list[float], expected: list[float], rel: float = 1e-12) -> None:
    assert len(actual) == len(expected), (actual, expected)
    for a, e in zip(actual, expected):
        assert math.isclose(a, e, rel_tol=rel), (actual, expected)


@pytest.mark.parametrize("case", VECTORS["even_mults"], ids=lambda c: f"{c['start']}-{c['stop']}-{c['n']}")
def test_even_mults_matches_fastcore(case):
    assert_close_list(even_mults(case["start"], case["stop"], case["n"]), case["expected"])


@pytest.mark.parametrize("case", VECTORS["set_hyper"], ids=lambda c: f"{c['spec']}-n{c['n_groups']}")
def test_peak_lrs_match_fastai_set_hyper(case):
    lr = spec_from_vector(case["spec"])
    assert_close_list(peak_lrs(lr, case["n_groups"]), case["expected"])


@pytest.mark.parametrize(
    ("lr", "n_groups", "expected"),
    [
        (1e-3, 3, [1e-3, 1e-3, 1e-3]),
        ([1e-5, 1e-4, 1e-3], 3, [1e-5, 1e-4, 1e-3]),
        (slice(1e-3), 3, [1e-4, 1e-4, 1e-3]),
        (slice(0, 1e-3), 2, [1e-4, 1e-3]),  # fastai reads a falsy start as slice(hi)
        (slice(None, 1e-3), 2, [1e-4, 1e-3]),
        (slice(1e-5, 1e-3), 3, [1e-5, 1e-4, 1e-3]),
        (slice(1e-5, 1e-3), 1, [1e-3]),  # one group takes the high end
        ("slice(1e-3)", 3, [1e-4, 1e-4, 1e-3]),
        ("slice(1e-5,1e-3)", 3, [1e-5, 1e-4, 1e-3]),
        (" slice( 1e-5 , 1e-3 ) ", 3, [1e-5, 1e-4, 1e-3]),
        ("slice(None, 1e-3)", 3, [1e-4, 1e-4, 1e-3]),  # as Python writes slice(1e-3)
        ("slice(0, 1e-3)", 2, [1e-4, 1e-3]),
        ("3e-4", 2, [3e-4, 3e-4]),
        ("[1e-4, 1e-3]", 2, [1e-4, 1e-3]),
        ({"low": 1e-5, "high": 1e-3}, 3, [1e-5, 1e-4, 1e-3]),
        ({"high": 1e-3}, 2, [1e-4, 1e-3]),
        ({"strategy": "single", "high": 1e-3}, 2, [1e-3, 1e-3]),
        ({"strategy": "fastai", "high": 1e-3}, 2, [1e-4, 1e-3]),
        ({"strategy": "geometric", "low": 1e-5, "high": 1e-3}, 3, [1e-5, 1e-4, 1e-3]),
        ({"strategy": "explicit", "values": [1e-5, 1e-3]}, 2, [1e-5, 1e-3]),
        # a strategy ignores the keys it does not use (a sweep's config may carry both)
        ({"strategy": "single", "low": 1e-6, "high": 1e-3}, 2, [1e-3, 1e-3]),
    ],
)
def test_every_form_gives_the_fastai_peaks(lr, n_groups, expected):
    assert_close_list(peak_lrs(lr, n_groups), expected)


@pytest.mark.parametrize(
    ("lr", "strategy"),
    [(1e-3, "single"), (slice(1e-3), "fastai"), (slice(1e-5, 1e-3), "geometric"), ([1e-3, 1e-2], "explicit")],
)
def test_each_form_names_its_strategy(lr, strategy):
    assert parse_lr(lr).strategy == strategy


@pytest.mark.parametrize("lr", [1e-3, slice(1e-3), slice(1e-5, 1e-3), [1e-4, 1e-3]])
def test_describe_reads_back_to_the_same_spec(lr):
    spec = parse_lr(lr)
    assert parse_lr(spec.describe()) == spec


@pytest.mark.parametrize(
    ("lr", "overrides"),
    [
        (3e-3, ["lr=single", "lr.high=0.003"]),
        (slice(1e-3), ["lr=fastai", "lr.high=0.001"]),
        (slice(1e-5, 1e-3), ["lr=geometric", "lr.low=1e-05", "lr.high=0.001"]),
        ([1e-5, 1e-4, 1e-3], ["lr=explicit", "lr.values=[1e-05,0.0001,0.001]"]),
    ],
)
def test_overrides_set_the_lr_group_to_the_spec(lr, overrides):
    assert parse_lr(lr).overrides() == overrides
    # what the overrides set reads back to the same spec (the lr group's nodes are such mappings)
    node = {"strategy": overrides[0].removeprefix("lr=")}
    for override in overrides[1:]:
        key, _, value = override.removeprefix("lr.").partition("=")
        node[key] = json.loads(value)
    assert parse_lr(node) == parse_lr(lr)


@pytest.mark.parametrize(
    ("lr", "n_groups", "fragments"),
    [
        (slice(1e-5, 1e-3, 2), 3, ["three arguments", "across layer groups", "cycle shape", "shape.pct_start"]),
        ("slice(1e-5,1e-3,1e-2)", 3, ["three arguments", "cycle shape"]),
        (slice(1e-3, 1e-5), 3, ["low > high", "slice(0.001, 1e-05)"]),
        ({"low": 1e-2, "high": 1e-4}, 3, ["low > high"]),
        (0.0, 3, ["lr", "positive"]),
        (-1e-3, 3, ["positive"]),
        (float("nan"), 3, ["positive, finite"]),
        (float("inf"), 3, ["positive, finite"]),
        ("slice(abc)", 3, ["not a learning rate"]),
        ("slice(None)", 3, ["high end"]),
        ("slice(1,2,3)", 3, ["three arguments"]),
        ("fast", 3, ["not a learning rate"]),
        ([1e-4, 1e-3], 3, ["2 learning rates", "3 layer", "exactly 3"]),
        ([], 3, ["empty list"]),
        ([1e-3, -1.0, 1e-3], 3, ["lr[1]"]),
        ({"strategy": "cyclic", "high": 1e-3}, 3, ["lr.strategy", "single"]),
        ({"strategy": "geometric", "high": 1e-3}, 3, ["lr.low"]),
        ({"strategy": "explicit"}, 3, ["lr.values"]),
        ({"hi": 1e-3}, 3, ["unknown key", "hi"]),
        (True, 3, ["not a learning rate"]),
        (object(), 3, ["not a learning rate"]),
    ],
)
def test_bad_lr_says_what_and_how_to_fix(lr, n_groups, fragments):
    with pytest.raises(SliceError) as error:
        peak_lrs(lr, n_groups)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)


def test_zero_groups_is_an_error():
    with pytest.raises(SliceError, match="n_groups"):
        SliceSpec("single", high=1e-3).peaks(0)
