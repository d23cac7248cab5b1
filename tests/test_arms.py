"""Compare mode (sweeper.sweep.arms): equal shares, a sampler per arm, pruning within an arm.

Each on a real Optuna study; the per-arm sampler is checked against a plain TPE sampler run on
a study that holds that arm's trials alone (the independent reference)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.config import ConfigError, compose_config
from sweeper.sweep.arms import ArmPruner, Arms, ArmSampler, arms_of
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.sampling import make_pruner
from sweeper.sweep.space import build_space

ARMS = Arms("strategy", ("a", "b"))


def tpe(seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True, group=True)


def score(x: float, arm: str) -> float:
    return -((x - (0.2 if arm == "a" else 0.7)) ** 2)


def compare_study(sampler, pruner=None) -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def test_every_arm_gets_an_equal_share_even_when_trials_fail():
    study = compare_study(ArmSampler(Arms("strategy", ("a", "b", "c")), lambda i: optuna.samplers.RandomSampler(seed=i)))

    failures = []

    def objective(trial):
        arm = trial.suggest_categorical("strategy", ["a", "b", "c"])
        x = trial.suggest_float("x", 0, 1)
        if arm == "c" and len(failures) < 2:
            failures.append(trial.number)
            raise ValueError("c fails twice early")  # its failed trials do not count: c gets more
        return score(x, arm)

    while len(study.get_trials(states=(TrialState.COMPLETE,))) < 12:
        study.optimize(objective, n_trials=1, catch=(ValueError,))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["strategy"] for t in complete) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert [t.number for t in study.trials if t.state == TrialState.FAIL] == failures == [2, 3]  # c again at once


def test_each_arm_samples_as_its_own_sampler_on_its_own_trials():
    study = compare_study(ArmSampler(ARMS, lambda i: tpe(seed=10 + i)))
    study.optimize(lambda t: score(t.suggest_float("x", 0, 1), t.suggest_categorical("strategy", ["a", "b"])), n_trials=16)
    for index, arm in enumerate(ARMS.values):
        drawn = [t.params["x"] for t in study.trials if t.params["strategy"] == arm]
        alone = compare_study(tpe(seed=10 + index))  # the reference: that arm's trials only, a plain TPE
        alone.optimize(lambda t, arm=arm: score(t.suggest_float("x", 0, 1), arm), n_trials=len(drawn))
        # Past the 3 random startup trials TPE models the observations: equal only if the arm's
        # sampler saw its own trials and nothing else.
        assert drawn == [t.params["x"] for t in alone.trials]


def test_a_trial_is_pruned_only_against_its_own_arm():
    def run(pruner) -> list[TrialState]:
        study = compare_study(ArmSampler(ARMS, lambda i: optuna.samplers.RandomSampler(seed=i)), pruner)

        def objective(trial):
            arm = trial.suggest_categorical("strategy", ["a", "b"])
            for step in range(3):
                trial.report(0.9 if arm == "a" else 0.1, step)  # b is always far below a, equal within b
                if trial.should_prune():
                    raise optuna.TrialPruned
            return 0.9 if arm == "a" else 0.1

        study.optimize(objective, n_trials=8)
        return [t.state for t in study.trials if t.params["strategy"] == "b"]

    median = dict(n_startup_trials=1, n_warmup_steps=0)
    assert TrialState.PRUNED in run(optuna.pruners.MedianPruner(**median))  # against a's trials: pruned
    assert set(run(ArmPruner(optuna.pruners.MedianPruner(**median), "strategy"))) == {TrialState.COMPLETE}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], Arms("strategy", ("single", "fastai", "geometric"))),  # the default search: strategies
        (["search=shapes"], None),  # one strategy: the shapes are compared
        (["search=slices", "sweep.compare=none"], None),
        (["sweep.compare=shape"], None),
        (["sweep.objectives={accuracy: maximize, loss: minimize}"], None),  # auto: one objective only
    ],
)
def test_auto_compares_what_the_search_draws_several_of(overrides, expected):
    cfg = compose_config(overrides)
    space = build_space(cfg)
    arms = arms_of(cfg.sweep.compare, space, bool(cfg.sweep.objectives), cfg.sampler._target_)
    if overrides[:1] == ["search=shapes"]:
        assert arms.param == "shape" and len(arms.values) == len(cfg.search.shape)
    elif overrides[:1] == ["sweep.compare=shape"]:
        assert arms.param == "shape"
    else:
        assert arms == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search=shapes", "sweep.compare=strategy"], "sweep.compare: strategy, but the search draws no strategy"),
        (["sweep.compare=slice"], "sweep.compare: 'slice' must be one of"),
        (["sweep.compare=strategy", "sweep.objectives={accuracy: maximize, loss: minimize}"], "by one objective"),
    ],
)
def test_a_compare_setting_that_cannot_work_is_one_line(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        plan_sweep([f"results_dir={tmp_path}", "tracking=none", *overrides], validate=False)


def test_unequal_shares_are_said_with_the_count_that_splits():
    assert ARMS.shares(6) is None
    assert "sweep.n_trials=40 does not split equally" in Arms("strategy", ("x", "y", "z")).shares(40)
    assert "sweep.n_trials=42 gives each 14" in Arms("strategy", ("x", "y", "z")).shares(40)


def test_the_default_compare_sweep_prunes_the_later_half_of_each_arm():
    """12 trials over 3 arms, pruner=median (n_startup_trials=4): an arm's 4 trials would never
    reach 4 complete ones, so nothing could be pruned. Capped at half an arm's share, its first 2
    run in full and its later ones are pruned when they fall below the arm's median."""
    cfg = compose_config(["tracking=none"])
    arms = arms_of(cfg.sweep.compare, build_space(cfg), False, cfg.sampler._target_)
    assert (cfg.sweep.n_trials, cfg.pruner.n_startup_trials, cfg.pruner.n_warmup_steps) == (12, 4, 2)

    def run(pruner) -> list[TrialState]:
        study = compare_study(ArmSampler(arms, lambda i: optuna.samplers.RandomSampler(seed=i)), pruner)

        def objective(trial):
            trial.suggest_categorical("strategy", list(arms.values))
            worse = trial.number / 100  # each arm's later trials do worse: the pruner's cue
            for epoch in range(6):
                trial.report(0.5 + 0.05 * epoch - worse, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned
            return 0.8 - worse

        study.optimize(objective, n_trials=cfg.sweep.n_trials)
        return [t.state for t in study.trials]

    unscaled = ArmPruner(optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2), arms.param)
    assert set(run(unscaled)) == {TrialState.COMPLETE}  # the bug: never pruned
    states = run(make_pruner(cfg, arms))
    assert states == [TrialState.COMPLETE] * 6 + [TrialState.PRUNED] * 6  # arm by arm: 2 run in full, 2 pruned
    assert arms.startup_trials(4, 12) == 2 and arms.startup_trials(4, 60) == 4 and arms.startup_trials(4, 3) == 1
    assert "after its first 2 complete trials" in arms.pruning_note(cfg.pruner, 12)
    assert arms.pruning_note(cfg.pruner, 60) is None  # 20 trials an arm: the configured 4 stand
