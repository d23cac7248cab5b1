"""The MLflow UI view `sweeper ui` saves (sweeper.analysis.ui.sweep_view); the page itself is
checked in Chromium by tests/test_browser.py."""

from __future__ import annotations

import pytest

from sweeper.analysis.ui import sweep_view


@pytest.mark.parametrize(("direction", "ascending"), [("maximize", False), ("minimize", True)])
def test_the_best_trial_comes_first_in_either_direction(direction, ascending):
    assert sweep_view("s", "loss" if ascending else "accuracy", direction)["orderByAsc"] is ascending


def test_trials_are_grouped_by_what_the_sweep_compared_without_pruned_ones():
    view = sweep_view("s", "accuracy", "maximize", compared="shape")
    assert view["groupBy"] == "tag.average.shape"
    assert view["searchFilter"].endswith("and tags.status != 'pruned'")  # partial scores stay out of the means
