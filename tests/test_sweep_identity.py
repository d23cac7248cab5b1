"""A sweep is its definition, and everything after it reads the sweep.

- The README's sweep commands, run in order in one folder: the second (another search, sampler and
  pruner under the same default name) is refused before anything is written, with the differences
  named; under a name of its own both sweeps stay apart in the study storage and in MLflow.
- `report`, `confirm`, `confirm --ablate` and `rerun` of a sweep of another model, run from a
  folder whose default config would name another sweep, file everything under that sweep's run.

Real `sweeper` processes on the stand-in trainer (tests/helpers/trainers.py), with MLflow on (embedded), read
back with Optuna and MLflow's own client.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from helpers.forked_cli import run_sweeper
from helpers.processes import with_tests_on_path
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

SMALL = ["sweep.trainer=helpers.trainers.StandInTrainer", "sweep.n_trials=3", "train.epochs=2", "sweep.live=false",
         "sweep.poll=0.2", "sweep.workers=1", "sweep.cpu_threads=1", "sampler.seed=0"]  # fmt: skip
# The README's commands in the order it gives them (`sweeper sweep` first).
FIRST = ["sweep"]
SECOND = ["sweep", "search=shapes", "sampler=random", "pruner=hyperband"]


def sweeper(folder: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": with_tests_on_path()}
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        env.pop(variable, None)
    return run_sweeper(args, folder, env, timeout)


def in_process(folder: Path, *args: str, capsys) -> tuple[int, str]:
    """`sweeper ARGS` in this process, run from `folder` (no process start: the commands after a
    sweep train one trial at a time, here)."""
    from sweeper.cli import main

    here = Path.cwd()
    os.chdir(folder)
    try:
        code = main(list(args))
    finally:
        os.chdir(here)
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    if code == 2:  # a refusal: one line that names the setting
        assert len(out.err.strip().splitlines()) == 1, out.err
    return code, out.out


def store_state(folder: Path) -> tuple:
    """What the two stores hold: studies with their trial counts, MLflow runs."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/results/studies.db")
    studies = {
        s.study_name: len(s.trials) for s in (optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage))
    }
    client = MlflowClient(f"sqlite:///{folder}/results/mlflow.db")
    experiments = client.search_experiments()
    runs = sorted(r.info.run_id for r in client.search_runs([e.experiment_id for e in experiments], max_results=1000))
    return studies, runs


def runs_of(client: MlflowClient, experiment: str, kind: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], f"tags.`sweeper.kind` = '{kind}'", max_results=1000) if found else []


def test_the_readme_sweeps_in_order_never_mix(tmp_path):
    first = sweeper(tmp_path, *FIRST, *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    before = store_state(tmp_path)
    listing = sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*") if "lock" not in p.name)

    refused = sweeper(tmp_path, *SECOND, *SMALL)
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr  # one line
    line = lines[0]
    assert "already exists" in line and "mlp-digits" in line
    # The differences that matter are named: the sampler, the pruner, the search space.
    assert "RandomSampler" in line and "HyperbandPruner" in line and "space." in line, line
    assert "sweep.name=mlp-digits-2" in line and "sweep.allow_changes=true" in line  # the two ways on
    assert store_state(tmp_path) == before  # nothing written: no trial, no run
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*") if "lock" not in p.name) == listing

    # The same command again (a resume) is no change of definition.
    again = sweeper(tmp_path, *FIRST, *SMALL[:1], "sweep.n_trials=4", *SMALL[2:])
    assert again.returncode == 0, again.stderr[-3000:]

    second = sweeper(tmp_path, *SECOND, *SMALL, "sweep.name=mlp-digits-shapes")
    assert second.returncode == 0, second.stderr[-3000:]
    studies, _ = store_state(tmp_path)
    assert studies == {"mlp-digits": 4, "mlp-digits-shapes": 3}  # apart, each at its own n_trials

    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    for name, n_trials in studies.items():
        (parent,) = runs_of(client, name, "sweep")
        trials = runs_of(client, name, "trial")
        assert len(trials) == n_trials
        assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parent.info.run_id}
        assert {t.data.tags["sweep"] for t in trials} == {name}
        # The parent run holds the sweep's outcome as metrics.
        assert parent.data.metrics["trials_complete"] + parent.data.metrics.get("trials_pruned", 0) == n_trials
        assert "best_accuracy" in parent.data.metrics
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/results/studies.db")
    shapes = optuna.load_study(study_name="mlp-digits-shapes", storage=storage)
    assert json.loads(shapes.user_attrs["definition"]["sampler._target_"]) == "optuna.samplers.RandomSampler"


def test_continuing_under_another_definition_is_recorded(tmp_path):
    assert sweeper(tmp_path, "sweep", *SMALL).returncode == 0
    changed = sweeper(tmp_path, "sweep", *SMALL[:1], "sweep.n_trials=4", *SMALL[2:], "pruner=none", "sweep.allow_changes=true")
    assert changed.returncode == 0, changed.stderr[-3000:]
    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{tmp_path}/results/studies.db")
    (change,) = study.user_attrs["definition_changes"]
    assert any(d.startswith("pruner._target_: optuna.pruners.MedianPruner -> optuna.pruners.NopPruner") for d in change["differences"])
    assert json.loads(study.user_attrs["definition"]["pruner._target_"]) == "optuna.pruners.NopPruner"
    assert len(study.trials) == 4


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped", "a b", "it's", "x/../../escaped"])
def test_a_sweep_name_cannot_leave_results(tmp_path, name, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", with_tests_on_path())
    code, _ = in_process(tmp_path, "sweep", *SMALL, f"sweep.name={name}", capsys=capsys)
    assert code == 2
    for command in ("report", "confirm", "ui"):  # a name given to the commands after a sweep too
        assert in_process(tmp_path, command, name, capsys=capsys)[0] == 2
    assert not (tmp_path / "results").exists() and not Path("/tmp/escaped").exists()
    assert not (tmp_path.parent / "escaped").exists()


@pytest.fixture(scope="module")
def cnn_sweep(tmp_path_factory):
    """A finished sweep of another model (cnn-digits) than the default config names (mlp-digits)."""
    folder = tmp_path_factory.mktemp("cnn")
    done = sweeper(folder, "sweep", "model=cnn", "search=slices", *SMALL, "sweep.n_trials=4")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder}/results/mlflow.db")
    (parent,) = runs_of(client, "cnn-digits", "sweep")
    return folder, client, parent.info.run_id


def test_report_of_another_sweep_uses_its_records(cnn_sweep, capsys):
    folder, client, parent = cnn_sweep
    code, out = in_process(folder, "report", "cnn-digits", capsys=capsys)
    assert code == 0 and f"MLflow run: {parent}" in out
    trials = (folder / "results" / "sweeps" / "cnn-digits" / "trials.csv").read_text().splitlines()
    trial_runs = {r.info.run_id for r in runs_of(client, "cnn-digits", "trial")}
    assert all(any(run in line for run in trial_runs) for line in trials[1:])  # every trial linked to its run
    assert client.get_experiment_by_name("mlp-digits") is None  # nothing filed under today's default


def test_confirm_ablation_and_rerun_are_filed_under_the_sweep(cnn_sweep, capsys):
    folder, client, parent = cnn_sweep
    assert (
        in_process(folder, "confirm", "cnn-digits", "--seeds", "2", "--strategy", "fastai", "--allow-module", "helpers", capsys=capsys)[0]
        == 0
    )
    code, out = in_process(folder, "confirm", "cnn-digits", "--ablate", "slice", "--seeds", "2", "--allow-module", "helpers", capsys=capsys)
    assert code == 0 and "held equal: shape, shape settings, head lr and seeds" in out
    # The study names code (the stand-in trainer) that is not sweeper's: refused until allowed.
    code, _ = in_process(folder, "confirm", "cnn-digits", "--seeds", "2", capsys=capsys)
    assert code == 2
    trial = runs_of(client, "cnn-digits", "trial")[0]
    assert in_process(folder, "rerun", trial.info.run_id, "--allow-module", "helpers", capsys=capsys)[0] == 0

    confirms = runs_of(client, "cnn-digits", "confirm")
    ablations = runs_of(client, "cnn-digits", "ablation")
    reruns = runs_of(client, "cnn-digits", "rerun")
    assert len(confirms) == 2 and len(ablations) == 3 * 2 and len(reruns) == 1
    for run in [*confirms, *ablations, *reruns]:
        assert run.data.tags["mlflow.parentRunId"] == parent  # under the sweep's run
        assert run.data.tags["sweep"] == "cnn-digits"
        assert run.data.params["model"] == "cnn"
    # Paired by seed: every strategy ran on the same seeds.
    seeds = {}
    for run in ablations:
        seeds.setdefault(run.data.tags["variant"], set()).add(run.data.params["seed"])
    assert len(seeds) == 3 and len({frozenset(s) for s in seeds.values()}) == 1
    # A filter on the kind shows the trials alone.
    assert {r.data.tags["sweeper.kind"] for r in runs_of(client, "cnn-digits", "trial")} == {"trial"}
    assert client.get_experiment_by_name("mlp-digits") is None
