"""Layer groups: every parameter in exactly one group, or an error that names it."""

from __future__ import annotations

import pytest
from torch import nn

from sweeper.zoo.groups import GroupError, split_groups


class BodyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.neck = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)


def names(groups) -> list[list[str]]:
    return [[name for name, _ in group] for group in groups]


def splitter_body_rest(model: nn.Module):
    """A fastai-style splitter for tests: the body, then the neck and head together."""
    return [model.body, [*model.neck.parameters(), *model.head.parameters()]]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "neck.weight", "neck.bias", "head.weight", "head.bias"]]),
        (
            ["body.0", "body.2", "neck", "head"],
            [
                ["body.0.weight", "body.0.bias"],
                ["body.2.weight", "body.2.bias"],
                ["neck.weight", "neck.bias"],
                ["head.weight", "head.bias"],
            ],
        ),
        (
            ["body", "neck", "head.weight", "head.bias"],
            [
                ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"],
                ["neck.weight", "neck.bias"],
                ["head.weight"],
                ["head.bias"],
            ],
        ),
        (3, [["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"], ["neck.weight", "neck.bias"], ["head.weight", "head.bias"]]),
        (2, [["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "neck.weight", "neck.bias"], ["head.weight", "head.bias"]]),
        (1, [["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "neck.weight", "neck.bias", "head.weight", "head.bias"]]),
        (
            "tests.test_groups.splitter_body_rest",
            [["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"], ["neck.weight", "neck.bias", "head.weight", "head.bias"]],
        ),
        (
            splitter_body_rest,
            [["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"], ["neck.weight", "neck.bias", "head.weight", "head.bias"]],
        ),
    ],
    ids=["none", "prefixes", "param-prefixes", "three", "two", "one", "splitter-path", "splitter"],
)
def test_split_places_every_parameter_once_in_order(spec, expected):
    model = BodyHead()
    groups = split_groups(model, spec)
    assert names(groups) == expected
    # the parameters are the model's own objects, so an optimizer trains the model
    own = dict(model.named_parameters())
    assert all(param is own[name] for group in groups for name, param in group)


def test_prefix_does_not_match_a_longer_sibling_name():
    model = nn.Module()
    model.layer1 = nn.Linear(2, 2)
    model.layer10 = nn.Linear(2, 2)
    assert names(split_groups(model, ["layer1", "layer10"])) == [["layer1.weight", "layer1.bias"], ["layer10.weight", "layer10.bias"]]


def splitter_twice(model):
    return [model.body, [model.body[0].weight, *model.neck.parameters(), *model.head.parameters()]]


def splitter_missing(model):
    return [model.body, model.head]


def splitter_empty(model):
    return [model.body, [], [*model.neck.parameters(), *model.head.parameters()]]


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        (["body", "nope", "head"], ["prefix 'nope' matches no parameter", "body", "neck"]),
        (["body", "neck"], ["head.weight", "in no group"]),
        (["body", "body.0", "neck", "head"], ["body.0.weight", "more than one prefix"]),
        ([], ["empty prefix list"]),
        (0, ["0 groups", "choose 1 to 3"]),
        (4, ["4 groups", "choose 1 to 3"]),
        ("no.such.splitter", ["cannot import splitter"]),
        (splitter_twice, ["body.0.weight", "groups 0 and 1"]),
        (splitter_missing, ["neck.weight", "in no group"]),
        (splitter_empty, ["group 1 has no parameters"]),
        (True, ["not a split"]),
        (1.5, ["not a split"]),
    ],
)
def test_bad_splits_name_the_parameter_or_prefix(spec, fragments):
    with pytest.raises(GroupError) as error:
        split_groups(BodyHead(), spec)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
