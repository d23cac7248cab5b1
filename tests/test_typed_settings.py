"""What the user is told to type is made of checked values only: the report's best trial is
offered as `sweeper rerun <its MLflow run id>` (which reads it through the boundary), and the
verdict's `lr=`/`shape=` settings are rebuilt from the checked config, never copied from a shared
study's overrides, where a look-alike name (a Cyrillic `ѕweeper`) or a module of the recorder's
choice may wait."""

from __future__ import annotations

import json

import pytest
from helpers.recorded_studies import write_recorded_study

from sweeper.cli import main

SWEEP = "shared"
RUN_ID = "0123456789abcdef0123456789abcdef"
LOOK_ALIKE = "\u0455weeper"  # a Cyrillic s
CODE = ["--allow-module", "helpers", "tracking=none", "results_dir=results"]


@pytest.fixture
def tampered(workdir, monkeypatch) -> str:
    """A study whose trials' overrides hold, besides what was drawn, a string of the recorder's
    choice that the boundary lets through (a model's name: no code), and whose run ids are one
    of MLflow's form and one that is a shell command."""
    monkeypatch.setenv("VERDICT_WORLD", "slice")
    drawn = ["lr.high=0.003", "shape=fastai_one_cycle", "shape.pct_start=0.3", f"model.name='{LOOK_ALIKE} train x'"]
    return write_recorded_study(
        workdir,
        SWEEP,
        [
            ("geometric", 0.9, drawn, {"mlflow_run_id": RUN_ID}),
            ("single", 0.8, drawn, {"mlflow_run_id": "x; touch owned"}),
        ],
    )


def test_the_report_offers_a_rerun_by_run_id_and_never_the_recorded_overrides(tampered, workdir, capsys):
    assert main(["report", SWEEP, f"storage.url={tampered}", "tracking=none", "results_dir=results"]) == 0, capsys.readouterr()
    markdown = (workdir / "results" / "sweeps" / SWEEP / "report.md").read_text()
    (best,) = [line for line in markdown.splitlines() if line.startswith("Best: ")]
    assert best == f"Best: trial 0 (accuracy 0.9, geometric, fastai_one_cycle): rerun it: `sweeper rerun {RUN_ID}`"
    assert "sweeper train" not in markdown and LOOK_ALIKE not in markdown


def test_a_run_id_not_of_mlflows_form_is_not_offered(tampered, workdir, capsys):
    import optuna

    study = optuna.load_study(study_name=SWEEP, storage=tampered)
    study.add_trial(optuna.trial.create_trial(value=0.95, user_attrs={**study.trials[1].user_attrs}))  # the best now
    assert main(["report", SWEEP, f"storage.url={tampered}", "tracking=none", "results_dir=results"]) == 0, capsys.readouterr()
    markdown = (workdir / "results" / "sweeps" / SWEEP / "report.md").read_text()
    (best,) = [line for line in markdown.splitlines() if line.startswith("Best: ")]
    assert best.startswith("Best: trial 2 (accuracy 0.95, single, fastai_one_cycle): no MLflow run to rerun")
    assert "touch owned" not in best


def test_the_verdict_types_only_checked_settings(tampered, workdir, capsys):
    code = main(["verdict", SWEEP, "--seeds", "2", f"storage.url={tampered}", *CODE])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    folder = workdir / "results" / "sweeps" / SWEEP
    arms = json.loads((folder / "verdict.json").read_text())["arms"]
    # the lr as parsed and formatted here, the shape an option on disk, its setting a number
    assert arms["geometric"] == "lr='slice(0.001,0.003)' shape=fastai_one_cycle shape.pct_start=0.3"
    assert arms["single"] == "lr=0.003 shape=fastai_one_cycle shape.pct_start=0.3"
    for text in (out, (folder / "verdict.md").read_text()):
        assert LOOK_ALIKE not in text and "sweeper train" not in text and "touch owned" not in text
        assert f"sweeper rerun {RUN_ID}" in text  # geometric's best trial, by its run id
    assert f"  geometric: {arms['geometric']}; rerun its best trial: sweeper rerun {RUN_ID}" in out.splitlines()
    assert f"  single: {arms['single']}" in out.splitlines()
