"""`sweeper verdict` end to end through the CLI, on worlds whose answer is known
(tests/helpers/verdict_worlds.py): a compare-mode sweep, then the verdict, read back from its output,
its files and the report that leads with it."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from helpers.processes import with_tests_on_path

STRATEGIES = "search.lr.strategies=[single,geometric]"


@pytest.fixture
def world(sweeper_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())

    def run(name: str, trials: int, seeds: int) -> tuple[str, dict]:
        monkeypatch.setenv("VERDICT_WORLD", name)
        common = ["sweep.trainer=helpers.verdict_worlds.World", "tracking=none"]
        swept = sweeper_cli(
            "sweep", "search=slices", STRATEGIES, *common, "pruner=none", "sampler.seed=0", "sweep.workers=1",
            "train.epochs=2", f"sweep.n_trials={trials}", f"sweep.name={name}",
        )  # fmt: skip
        assert swept.returncode == 0, swept.stderr[-3000:]
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/results/studies.db")
        per_arm = pd.Series([t.params["strategy"] for t in study.trials]).value_counts().to_dict()
        assert per_arm == {"single": trials // 2, "geometric": trials // 2}  # compare mode: equal shares
        said = sweeper_cli("verdict", name, f"--seeds={seeds}", "--allow-module", "helpers", *common)
        assert said.returncode == 0, said.stderr[-3000:]
        # a line per finished run (not a terminal): 2 arms x 2 settings x seeds
        assert f"verdict: run {4 * seeds}/{4 * seeds} " in said.stdout
        folder = tmp_path / "results" / "sweeps" / name
        recorded = json.loads((folder / "verdict.json").read_text())
        assert recorded["answer"] in said.stdout
        assert f"**Verdict** (`sweeper verdict`): {recorded['answer']}" in (folder / "report.md").read_text()
        assert (folder / "verdict.png").stat().st_size > 0
        return recorded["answer"], recorded["arms"]

    return run


def test_arms_that_differ_only_in_the_lr_they_tolerate(world):
    answer, arms = world("tolerance", trials=12, seeds=3)
    assert answer.startswith("geometric is best at its own tuned settings")
    assert "its advantage comes from the lr it tolerates, not from the slice itself" in answer
    assert "the slice itself makes the difference" not in answer
    # each arm's settings as a user types them: the fastai lr forms
    assert arms["geometric"].startswith("lr='slice(") and arms["single"].startswith("lr=0.00")


def test_a_slice_that_matters_at_every_lr(world):
    answer, _ = world("slice", trials=12, seeds=3)
    assert answer.startswith("geometric is best at its own tuned settings")
    assert "the slice itself makes the difference" in answer


def test_too_few_trials_and_seeds_say_too_close_to_tell(world):
    answer, _ = world("close", trials=4, seeds=2)
    assert answer.startswith("Too close to tell with this budget between")
    assert "more seeds (--seeds " in answer and "more trials per arm (sweep.n_trials=" in answer
