"""The MLflow UI view `sweeper ui` saves (sweeper.analysis.ui.sweep_view); the page itself is
checked in Chromium by tests/test_browser.py."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.analysis.ui import sampled_settings, sweep_view


@pytest.mark.parametrize(("direction", "ascending"), [("maximize", False), ("minimize", True)])
def test_the_best_trial_comes_first_in_either_direction(direction, ascending):
    assert sweep_view("s", "loss" if ascending else "accuracy", direction)["orderByAsc"] is ascending


def test_trials_are_grouped_by_what_the_sweep_compared_and_how_they_ended():
    view = sweep_view("s", "accuracy", "maximize", compared="shape")
    keys = [key["groupByData"] for key in view["groupBy"]["groupByKeys"]]
    assert keys == ["shape", "status"]  # a pruned trial's partial score in no complete group's mean
    assert view["searchFilter"].startswith("tags.sweep = 's' and ")  # the trials and the sweep's run, no confirmations


def test_the_objective_chart_comes_first_then_the_sampled_settings():
    view = sweep_view("s", "loss", "minimize", sampled=["lr.high"])
    charts = view["compareRunCharts"]
    assert [c.get("metricKey") for c in charts] == ["objective", None, "valid_loss", "train_loss"]  # valid_loss once
    assert charts[1]["selectedParams"] == ["lr.high"] and charts[1]["selectedMetrics"] == ["objective"]
    # A section MLflow counts as reordered appends the other metrics after these, not alphabetically before.
    assert view["compareRunSections"][0]["isReordered"] and view["isAccordionReordered"]


def test_the_sampled_settings_are_the_numbers_every_complete_trial_drew():
    study = optuna.create_study()
    study.set_user_attr("overrides", ["train.epochs=4"])
    draws = [
        (TrialState.COMPLETE, ["lr=geometric", "lr.high=0.01", "lr.low=0.001", "optimizer.weight_decay=0.01", "shape=triangular"]),
        (TrialState.COMPLETE, ["lr=single", "lr.high=0.02", "optimizer.weight_decay=0.1", "shape.pct_start=0.3"]),
        (TrialState.PRUNED, ["lr=single", "lr.high=0.03"]),  # a pruned trial's draws do not narrow it
    ]
    for state, overrides in draws:
        trial = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, params={"x": 0.5},
                             distributions={"x": FloatDistribution(0, 1)}, user_attrs={"overrides": ["train.epochs=4", *overrides]})  # fmt: skip
        study.add_trial(trial)
    assert sampled_settings(study) == ["lr.high", "optimizer.weight_decay"]  # not the strategy's, shape's or lr.low
