"""Every answer that needs no trial comes before the libraries the trials need.

A sweep refused for its name (another definition under it), a sweep that is already done, an
export to a path that exists, `confirm` with too few seeds, a sweep name that is not there: each
is said by a fresh `sweeper` process that has loaded neither torch nor MLflow (seconds each), and
writes nothing. `--dry-run` refuses what the command refuses.

The sweeps here are made in this process with Optuna (no trial runs); the commands run in a
fresh interpreter, whose sys.modules says what they loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from test_bad_input import made_under

from sweeper.cli import main
from sweeper.sweep.plan import plan_sweep
from sweeper.sweep.study import open_study

# Read in a fresh interpreter: the command's exit code, then what it loaded (the last line).
LOADED = """
import sys
from sweeper.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in ("torch", "mlflow", "matplotlib", "pandas") if m in sys.modules))
"""
HEAVY_NONE = "[]"

SWEEP = ["sweep.name=first", "sweep.cover=false", "results_dir=results"]
OTHER_DEFINITION = ["sampler=random"]  # under the same name: another sweep


def command(argv: list[str], folder: Path) -> tuple[int, str, str, str]:
    """`sweeper ARGV` in a fresh interpreter run from `folder`: (exit code, what it loaded, its
    stdout before that, its stderr)."""
    done = subprocess.run([sys.executable, "-c", LOADED, *argv], cwd=folder, capture_output=True, text=True, timeout=300)
    *out, last = done.stdout.strip().splitlines()
    code, loaded = last.split(" ", 1)
    return int(code), loaded, "\n".join(out), done.stderr


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: a write changes one."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def make_study(folder: Path, finished: int = 0) -> optuna.Study:
    """The sweep of SWEEP as `sweeper sweep` records it, with `finished` complete trials."""
    plan = plan_sweep([*SWEEP[:-1], f"results_dir={folder / 'results'}"], validate=False)
    study = open_study(plan, create=True)
    for value in range(finished):
        study.tell(study.ask(), float(value))
    return study


@pytest.fixture
def existing(workdir):
    make_study(workdir)
    return workdir


def test_a_sweep_refused_for_its_name_loads_no_torch_or_mlflow_and_writes_nothing(existing):
    before = snapshot(existing)
    code, loaded, _, err = command(["sweep", *SWEEP, *OTHER_DEFINITION], existing)
    assert code == 2 and "sweep.name: a sweep named 'first' already exists" in err and "sampler._target_" in err, err
    assert len(err.splitlines()) == 1
    assert loaded == HEAVY_NONE
    assert snapshot(existing) == before


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_dry_run_refuses_what_the_command_refuses(existing, dry_run, capsys):
    before = snapshot(existing)
    code = main(["sweep", *dry_run, *SWEEP, *OTHER_DEFINITION])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sweeper sweep: error: sweep.name: a sweep named 'first' already exists"), err
    assert snapshot(existing) == before


def test_dry_run_of_the_same_definition_passes(existing, capsys):
    """The check compares definitions: the sweep's own command is not refused."""
    assert main(["sweep", "--dry-run", *SWEEP]) == 0
    assert "sweep first:" in capsys.readouterr().out


def test_a_finished_sweep_says_so_without_torch_or_mlflow_and_writes_nothing(workdir):
    make_study(workdir, finished=2)
    before = snapshot(workdir)
    code, loaded, out, err = command(["sweep", *SWEEP, "sweep.n_trials=2"], workdir)
    assert code == 0, err
    assert "sweep first already has 2 finished trials; raise sweep.n_trials" in out
    assert "sweep first: 2/2 finished" in out  # the outcome, as at the end of a sweep
    assert loaded == HEAVY_NONE
    assert snapshot(workdir) == before


def test_an_export_to_an_existing_path_is_refused_first(workdir):
    kept = workdir / "model.pt"
    kept.write_bytes(b"mine")
    code, loaded, _, err = command(["export", "nosuch", "model.pt"], workdir)
    assert code == 2 and "export: model.pt exists already" in err, err
    assert loaded == HEAVY_NONE
    assert made_under(workdir) == ["model.pt"] and kept.read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["confirm", "--seeds", "0", "first", "results_dir=results"], "--seeds: 0 gives no spread"),
        (["confirm", "--seeds", "1", "--ablate", "slice", "first", "results_dir=results"], "--seeds: 1 gives no spread"),
        (["confirm", "nosuch", "results_dir=results"], "sweep name: no sweep 'nosuch'"),
        (["report", "nosuch", "results_dir=results"], "sweep name: no sweep 'nosuch'"),
        (["ui", "nosuch", "results_dir=results"], "sweep name: no sweep 'nosuch'"),
    ],
)
def test_commands_after_a_sweep_refuse_before_loading_their_work(existing, argv, fragment):
    before = snapshot(existing)
    code, loaded, _, err = command(argv, existing)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert loaded == HEAVY_NONE
    assert snapshot(existing) == before


def test_a_sweep_its_trainer_refuses_is_said_by_the_warm_servers_check_without_torch_here(workdir):
    """The trainer's checks (its metrics, one trial built) run in a process forked from the warm
    server, which loads the trainer: the sweep's own process says the refusal, loading no torch."""
    code, loaded, _, err = command(["sweep", "train.objective=f1", "results_dir=results"], workdir)
    assert code == 2 and err.startswith("sweeper sweep: error: train.objective") and "['accuracy', 'loss']" in err, err
    assert len(err.splitlines()) == 1
    assert "torch" not in loaded
    assert made_under(workdir) == []


@pytest.mark.slow
def test_a_real_sweeps_process_loads_no_torch(workdir):
    """sweeper's own trainer, trained by the workers: the sweep's process checks, records and
    reports without loading torch."""
    argv = ["sweep", "sweep.n_trials=1", "train.epochs=1", "sweep.workers=1", "sweep.live=false", "results_dir=results"]
    code, loaded, out, err = command(argv, workdir)
    assert code == 0, out[-2000:] + err[-2000:]
    assert "1/1 finished" in out
    assert "torch" not in loaded
