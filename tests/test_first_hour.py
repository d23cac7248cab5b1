"""What a new user meets in the first hour, through the real command line: advice that names the
fix that works, files that do not overwrite each other, output that reads at a glance."""

from __future__ import annotations

import json
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
