"""What a new user meets in the first hour, through the real command line: advice that names the
fix that works, files that do not overwrite each other, output that reads at a glance."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import optuna
from test_report import TRIALS, sweep_trial

from sweeper.cli import main


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
