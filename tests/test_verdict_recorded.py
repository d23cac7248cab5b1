"""`sweeper verdict` records its answer on the sweep's parent run, read back from a real local
MLflow store with MlflowClient: the `verdict` tag, the comparisons table and the files."""

from __future__ import annotations

import json

import pytest
from helpers.recorded_studies import write_recorded_study
from mlflow import MlflowClient

from sweeper.cli import main
from sweeper.config import compose_config
from sweeper.records.tracking import prepare_sweep

SWEEP = "tracked"
TRACKED = ["tracking=local", "tracking.schedule_plot=false", "tracking.save_model=none", "results_dir=results"]


@pytest.mark.slow  # 8 recorded runs, the report drawn again and read back: about a minute on 2 loaded cores
def test_the_verdict_is_recorded_on_the_sweeps_parent_run(workdir, monkeypatch, capsys):
    monkeypatch.setenv("VERDICT_WORLD", "slice")
    settings = ["lr.high=0.003", "shape=fastai_one_cycle"]
    storage = write_recorded_study(workdir, SWEEP, [("geometric", 0.9, settings, {}), ("single", 0.8, settings, {})])
    parent = prepare_sweep(compose_config([*TRACKED, f"sweep.name={SWEEP}"]), SWEEP).parent_run_id  # as the sweep began it
    code = main(["verdict", SWEEP, "--seeds", "2", "--allow-module", "helpers", f"storage.url={storage}", *TRACKED])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    answer = json.loads((workdir / "results" / "sweeps" / SWEEP / "verdict.json").read_text())["answer"]
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    run = client.get_run(parent)
    assert run.data.tags["verdict"] == answer and answer.startswith("geometric is best")
    files = {a.path for a in client.list_artifacts(parent, "verdict")}
    assert {"verdict/verdict.md", "verdict/verdict.csv", "verdict/verdict_comparisons.csv", "verdict/verdict.png"} <= files
    (table,) = [f for f in files if f.startswith("verdict/comparisons-") and f.endswith(".json")]
    recorded = json.loads((workdir / client.download_artifacts(parent, table, str(workdir))).read_text())
    rows = [dict(zip(recorded["columns"], row)) for row in recorded["data"]]
    # 2 arms: geometric vs single tuned, and each at the other's settings; the slice matters in this world
    assert [(r["comparison"], r["held equal"], r["real"]) for r in rows] == [
        ("geometric vs single", "each at its own tuned settings", "yes"),
        ("geometric vs single", "at geometric's settings", "yes"),
        ("single vs geometric", "at single's settings", "yes"),
    ]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}' and tags.verdict = 'true'")
    assert len(children) == 8  # 2 arms x 2 settings x 2 seeds, each a child of the sweep's run
