"""A real sweep, end to end: `sweeper sweep` on the digits transfer task with the real trainer,
the median pruner and MLflow; then the study is checked. (Resuming and workers racing are
checked with the stand-in trainer in test_workers.py; the real trainer under two and eight
workers in test_faults.py.)

One worker and a seeded sampler make the sweep the same every time: which trials the median
pruner stops depends on the order in which trials finish, and with two workers that order is a
race (each worker k also draws with seed + k, so who asks first changes the points drawn)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.sweep.counts import count_trials
from sweeper.sweep.plan import plan_sweep

SWEEP = [
    "experiment=digits_transfer", "train.epochs=3", "sweep.workers=1", "sweep.cpu_threads=1", "pruner=median",
    "sweep.poll=0.5", "sampler.seed=0", "sweep.compare=none",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(660)  # beyond the sweep's own limit below
def test_digits_transfer_sweep_runs_exactly_n_trials_inside_the_space(sweeper_cli, tmp_path):
    done = sweeper_cli("sweep", *SWEEP, "sweep.n_trials=12", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = plan_sweep(SWEEP, validate=False)
    study = optuna.load_study(study_name=plan.name, storage=f"sqlite:///{tmp_path}/results/studies.db")
    counts = count_trials(study)
    assert counts.finished == 12 and counts.running == 0  # exactly n_trials
    assert counts.pruned > 0  # the pruner stopped some trials early

    dimensions = {d.name: d.distribution for d in plan.space.dimensions()}
    for trial in study.trials:
        for name, value in trial.params.items():
            dist = dimensions[name]
            assert trial.distributions[name] == dist
            assert dist._contains(dist.to_internal_repr(value)), (trial.number, name, value)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert {t.params["strategy"] for t in finished} == set(plan.space.strategy.distribution.choices)
    assert {t.params["shape"] for t in finished} == set(plan.space.shape.distribution.choices)
    assert all(t.user_attrs["status"] in ("finished", "pruned") for t in finished)

    assert f"sweep {plan.name}: 12/12 finished" in done.stdout
    assert "rerun it: sweeper rerun RUN_ID, with trial " in done.stdout
    assert (tmp_path / "results" / "sweeps" / plan.name / "trials.csv").is_file()
