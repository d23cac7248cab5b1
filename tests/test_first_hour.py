"""What a new user meets in the first hour, through the real command line: advice that names the
fix that works, files that do not overwrite each other, output that reads at a glance."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import optuna
import pytest
from helpers.forked_cli import spawn
from helpers.processes import with_tests_on_path
from helpers.waiting import wait_until
from mlflow import MlflowClient
from test_report import TRIALS, sweep_trial

from sweeper.cli import main
from sweeper.records.recorder import record_run
from sweeper.trial.events import Reporter


def a_sweep_in(folder: Path, name: str = "mlp-digits") -> None:
    """A sweep's study under folder/results/, as `sweeper sweep` leaves it (tracking off)."""
    (folder / "results").mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder}/results/studies.db", direction="maximize")
    study.set_user_attr("objectives", ["accuracy"])
    study.set_user_attr("overrides", ["train.epochs=2", "tracking=none"])
    for spec in TRIALS:
        study.add_trial(sweep_trial(*spec))


def test_report_from_another_folder_names_results_dir_which_finds_the_sweep(workdir, monkeypatch, capsys):
    elsewhere = workdir / "project"
    a_sweep_in(elsewhere)
    here = workdir / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    for command in ("report", "ui"):
        assert main([command, "mlp-digits", "tracking=none"]) == 2
        err = capsys.readouterr().err
        assert "results_dir=/that/folder/results" in err and f"no {here}/results/studies.db" in err, err
        assert not (here / "results").exists()  # nothing made

    # The fix the message names works.
    assert main(["report", "mlp-digits", f"results_dir={elsewhere}/results", "tracking=none"]) == 0, capsys.readouterr().err
    assert (elsewhere / "results" / "sweeps" / "mlp-digits" / "report.md").is_file()


def readme_commands(command: str) -> list[list[str]]:
    """The README's `.venv/bin/sweeper COMMAND ...` lines, in order, as the shell splits them."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    prefix = f".venv/bin/sweeper {command} "
    return [shlex.split(line.removeprefix(".venv/bin/sweeper "), comments=True) for line in readme.splitlines() if line.startswith(prefix)]


def test_the_readme_schedule_commands_in_order_write_one_plot_each(workdir, capsys):
    commands = readme_commands("schedule")
    assert len(commands) == 4, commands
    plots = []
    for argv in commands:
        assert main(argv) == 0
        out = capsys.readouterr().out
        plot = json.loads(out)["plot"] if "--json" in argv else out.rsplit("plot: ", 1)[1].strip()
        plots.append(plot)
    assert len(set(plots)) == len(commands), plots  # none overwrote another
    assert all((workdir / plot).stat().st_size > 0 for plot in plots)
    assert plots[0] == "results/schedule-lr-slice-1e-5-1e-3_groups-3_steps-100.png"


def test_lr_find_prints_the_commands_that_use_its_suggestion(workdir, capsys):
    assert main(["lr-find", "--num-it", "40", "model=cnn", "tracking=none"]) == 0
    out = capsys.readouterr().out
    valley = float(re.search(r"valley +(\S+)", out)[1])
    train = shlex.split(re.search(r"use it: sweeper (train .*)", out)[1])
    sweep = shlex.split(re.search(r"sweep a decade either side: sweeper (sweep .*)", out)[1])
    assert train == ["train", "model=cnn", "tracking=none", f"lr={valley:.2g}"]
    assert sweep[-1] == f"search.lr.high=tag(log, interval({valley / 10:.2g}, {valley * 10:.2g}))"

    # Both commands read as printed: the trial's lr is the valley, the sweep samples around it.
    assert main(["schedule", "--json", "--no-plot", *train[1:]]) == 0
    assert json.loads(capsys.readouterr().out)["peaks"] == [float(f"{valley:.2g}")] * 3
    assert main([*sweep, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[{valley / 10:.2g}, {valley * 10:.2g})" in out, out


QUICK = ["train.epochs=3", "train.device=cpu", "train.deterministic=true", "train.batch_size=128", "train.threads=1"]


class PrunedAfterFirstEpoch(Reporter):
    """What a sweep's pruner does to a weak trial: stop it after its first epoch."""

    def on_epoch(self, event) -> bool:
        return True


def test_rerun_of_a_pruned_mlflow_run_trains_the_epochs_it_reached(tracked_config, tmp_path, capsys):
    trainer = pytest.importorskip("sweeper.training.trainer")
    cfg = tracked_config(*QUICK)
    recorder = record_run(cfg)
    assert trainer.train(cfg, [PrunedAfterFirstEpoch(), recorder]).status == "pruned"
    assert MlflowClient(recorder.settings.uri).get_run(recorder.run_id).data.tags["status"] == "pruned"

    code = main(["rerun", "--strict", recorder.run_id, f"results_dir={tmp_path}/results"])
    out = capsys.readouterr().out
    assert code == 0, out  # --strict: every curve bitwise equal, no step missing
    assert "the trial was pruned after epoch 1 of 3: the rerun trains its schedule that far and stops there too" in out
    assert "pruned; largest absolute difference" in out and "(bitwise equal)" in out


def test_rerun_of_a_pruned_train_folder_compares_the_epochs_it_reached(workdir, capsys):
    pytest.importorskip("sweeper.training.trainer")
    assert main(["train", "--name", "source", "--quiet", *QUICK, "tracking=none"]) == 0
    # As the folder of a trial pruned after its second epoch would hold it.
    result_file = workdir / "results" / "train" / "source" / "result.json"
    result = json.loads(result_file.read_text())
    result.update(status="pruned", epochs=result["epochs"][:2], steps=[s for s in result["steps"] if s["epoch"] < 2])
    result_file.write_text(json.dumps(result))
    capsys.readouterr()

    code = main(["rerun", "--strict", "--name", "again", "results/train/source", "tracking=none"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "pruned after epoch 2 of 3" in out and "(bitwise equal)" in out
    rerun = json.loads((workdir / "results" / "reruns" / "again" / "result.json").read_text())
    assert rerun["status"] == "pruned" and len(rerun["epochs"]) == 2


def test_a_sweep_into_a_log_file_shows_epochs_and_short_numbers_and_no_library_noise(workdir, monkeypatch):
    """`sweeper sweep > log` (CI, nohup): a line while trials train, not only when one ends;
    numbers read at a glance while the records (and `sweeper rerun` of them) keep them exact; no INFO lines of MLflow's
    or Optuna's among the sweep's own."""
    gates = workdir / "gates"
    env = {**os.environ, "PYTHONPATH": with_tests_on_path(), "TRIAL_GATES": str(gates), "TRIAL_HOLD_AFTER": "0"}
    command = [
        sys.executable, "-m", "sweeper.cli", "sweep", "sweep.trainer=helpers.trainers.StandInTrainer", "search=slices",
        "sweep.n_trials=1", "sweep.workers=1", "sweep.cpu_threads=1", "train.epochs=3", "pruner=none", "sweep.poll=0.2",
        "tracking.schedule_plot=false",
    ]  # fmt: skip
    log = workdir / "sweep.log"
    sweep = spawn(command, env, log, cwd=workdir)  # helpers.forked_cli
    try:
        # The trial holds after its first epoch: the log says so while it holds.
        wait_until(lambda: "(epoch 1 done)" in log.read_text(), "a progress line with the epochs done", sweep)
        (gates / "release").touch()
        assert sweep.wait(timeout=600) == 0, log.read_text()
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    text = log.read_text()
    assert "Creating initial MLflow database tables" not in text and "A new study created" not in text, text
    assert " INFO " not in text and "[I " not in text, text

    study = optuna.load_study(study_name="mlp-digits", storage=f"sqlite:///{workdir}/results/studies.db")
    exact = next(o for o in study.trials[0].user_attrs["overrides"] if o.startswith("lr.high="))
    short = f"lr.high={float(exact.split('=')[1]):.3g}"
    progress = [line for line in text.splitlines() if "finished (" in line]
    assert any(short in line for line in progress) and not any(exact in line for line in progress), text
    # exact where it reruns: its MLflow run, checked by `sweeper rerun`; recorded overrides are no command to type
    assert "rerun it: sweeper rerun RUN_ID, with trial 0's MLflow run id" in text and "sweeper train " not in text, text


def test_train_says_its_mlflow_run_and_files_it_with_the_train_runs(workdir, capsys):
    pytest.importorskip("sweeper.training.trainer")
    assert main(["train", "--quiet", *QUICK]) == 0
    out = capsys.readouterr().out
    found = re.search(r"MLflow run (\w+) \(experiment train\); see it: mlflow ui --backend-store-uri (\S+); its weights: (.*)", out)
    assert found, out
    run_id, store, export = found.groups()
    assert store == f"sqlite:///{workdir}/results/mlflow.db"

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "train"
    assert client.get_experiment_by_name("mlp-digits") is None  # not among the default sweep's trials
    assert run.info.run_name.startswith("train · geometric · fastai_one_cycle")  # named by what it trained
    assert run.data.tags["sweeper.kind"] == "train" and run.data.tags["sweeper.folder"].startswith("results/train/")

    # The export command it prints works as printed.
    assert main(shlex.split(export.removeprefix("sweeper "))) == 0, capsys.readouterr().err
    assert (workdir / "model.pt").stat().st_size > 0
