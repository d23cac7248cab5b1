"""`sweeper schedule`: the table, the JSON and the plot a user sees before any training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweeper.cli import main
from sweeper.config import compose_config
from sweeper.schedules.shapes import FastaiOneCycle, Schedule
from sweeper.trial.schedule import schedule_of


def run_schedule(capsys, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    code = main(["schedule", *args, f"results_dir={tmp_path / 'results'}"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_has_every_step_of_every_group(capsys, tmp_path):
    code, out, _ = run_schedule(capsys, tmp_path, "--lr", "slice(1e-5,1e-3)", "--groups", "3", "--steps", "40", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["peaks"] == pytest.approx([1e-5, 1e-4, 1e-3])
    assert document["strategy"] == "geometric" and document["shape"]["name"] == "fastai_one_cycle"
    expected = Schedule((1e-5, 1e-4, 1e-3), FastaiOneCycle(), 40)
    assert len(document["rows"]) == 40
    for row in document["rows"]:
        lrs, momentum = expected.at(row["step"])
        assert [row["lr_0"], row["lr_1"], row["lr_2"]] == lrs and row["momentum"] == momentum
    assert Path(document["plot"]).stat().st_size > 0  # the plot was written under results/


def test_shape_and_its_settings_come_from_overrides(capsys, tmp_path):
    code, out, _ = run_schedule(
        capsys,
        tmp_path,
        "--lr",
        "1e-2",
        "--groups",
        "2",
        "--steps",
        "20",
        "--json",
        "--no-plot",
        "shape=torch_one_cycle",
        "shape.pct_start=0.25",
        "shape.three_phase=true",
    )
    assert code == 0
    rows = json.loads(out)["rows"]
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(2)], lr=1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=20, pct_start=0.25, three_phase=True)
    for row in rows:  # the printed values are OneCycleLR's own
        assert math.isclose(row["lr_1"], optimizer.param_groups[1]["lr"], rel_tol=1e-12)
        assert math.isclose(row["momentum"], optimizer.param_groups[0]["momentum"], rel_tol=1e-12)
        optimizer.step()
        scheduler.step()
    assert not (tmp_path / "results").exists()  # --no-plot writes nothing


def test_table_shows_groups_and_every_nth_step(capsys, tmp_path):
    code, out, _ = run_schedule(capsys, tmp_path, "--lr", "slice(1e-3)", "--groups", "2", "--steps", "10", "--every", "4")
    assert code == 0
    assert "lr group 1 (head)" in out and "momentum" in out
    steps = [line.split()[1] for line in out.splitlines() if line.startswith("│")]
    assert steps == ["0", "4", "8", "9"]  # every 4th step and the last one
    # named by the options given (results_dir only says where)
    assert (tmp_path / "results" / "schedule-lr-slice-1e-3_groups-2_steps-10.png").stat().st_size > 0
    assert f"plot: {tmp_path}/results/schedule-lr-slice-1e-3_groups-2_steps-10.png" in out


def test_a_fine_tune_config_prints_and_plots_both_phases(capsys, tmp_path):
    settings = ["train.freeze_epochs=1", "train.epochs=3", "shape=fastai_fine_tune", "shape.moms=[0.9,0.8,0.9]"]
    code, out, _ = run_schedule(capsys, tmp_path, "--json", "--steps", "40", *settings)
    assert code == 0
    document = json.loads(out)
    assert [(p["name"], p["epochs"], p["steps"]) for p in document["phases"]] == [("frozen", 1, 10), ("unfrozen", 3, 30)]
    assert document["phases"][0]["trainable"] == [False, False, True]
    assert document["phases"][0]["shape"]["pct_start"] == 0.99 and document["phases"][0]["shape"]["moms"] == [0.9, 0.8, 0.9]
    assert document["rows"] == schedule_of(compose_config(settings), steps=40).rows()  # the trainer's schedule
    assert [r["phase"] for r in document["rows"]] == ["frozen"] * 10 + ["unfrozen"] * 30
    assert Path(document["plot"]).stat().st_size > 0
    code, out, _ = run_schedule(capsys, tmp_path, "--steps", "40", "--every", "10", "--no-plot", *settings)  # the table too
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("│")]
    assert [(row[1], row[3]) for row in rows] == [
        ("0", "frozen"),
        ("10", "unfrozen"),
        ("20", "unfrozen"),
        ("30", "unfrozen"),
        ("39", "unfrozen"),
    ]


def test_a_fine_tune_config_defaults_to_whole_epochs_near_100_steps(capsys, tmp_path):
    code, out, _ = run_schedule(capsys, tmp_path, "--json", "--no-plot", "train.freeze_epochs=1", "train.epochs=6")
    assert code == 0 and json.loads(out)["steps"] == 98  # 7 epochs of 14 batches


def test_sgd_without_momentum_shows_no_momentum(capsys, tmp_path):
    code, out, _ = run_schedule(capsys, tmp_path, "--json", "--no-plot", "--steps", "5", "optimizer=sgd", "optimizer.momentum=0")
    assert code == 0
    assert [r["momentum"] for r in json.loads(out)["rows"]] == [None] * 5  # the optimizer's own: 0


def test_the_groups_default_to_the_models(capsys, tmp_path):
    code, out, _ = run_schedule(
        capsys, tmp_path, "--json", "--no-plot", "--steps", "5", "model.groups=tests.test_trial_schedule.split_in_two"
    )
    assert code == 0 and len(json.loads(out)["peaks"]) == 2  # a splitter's groups, counted on the model


def test_the_config_lr_is_the_default(capsys, tmp_path):
    code, out, _ = run_schedule(capsys, tmp_path, "--json", "--no-plot", "--steps", "5", "lr=fastai", "lr.high=3e-3")
    assert code == 0
    assert json.loads(out)["peaks"] == pytest.approx([3e-4, 3e-4, 3e-3])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lr", "slice(1e-5,1e-3,1e-2)"], ["three arguments", "cycle shape"]),
        (["--lr", "slice(1e-3,1e-5)"], ["low > high"]),
        (["--lr", "-1"], ["positive"]),
        (["--lr", "nan"], ["positive, finite"]),
        (["--lr", "[1e-4,1e-3]", "--groups", "3"], ["2 learning rates", "3 layer groups"]),
        (["shape.pct_start=1.5"], ["shape.pct_start", "outside [0, 1]"]),
        (["shape=torch_one_cycle", "shape.pct_start=0"], ["shape.pct_start"]),
        (["shape.div=0"], ["shape.div", "positive"]),
        (["shape=torch_one_cycle", "shape.div_factor=-1"], ["shape.div_factor"]),
        (["shape=nope"], ["shape/nope", "Available options", "torch_one_cycle"]),
        (["shape.warp=3"], ["warp"]),
        (["--groups", "0"], ["--groups"]),
        (["--steps", "0"], ["--steps"]),
        (["--steps", "10", "train.freeze_epochs=1"], ["--steps", "7 epochs", "--steps 7"]),
        (["lr.strategy=cyclic"], ["lr.strategy"]),
    ],
)
def test_bad_input_exits_2_with_one_clear_message_and_writes_nothing(capsys, tmp_path, args, fragments):
    code, out, err = run_schedule(capsys, tmp_path, *args)
    assert code == 2, (out, err)
    assert out == ""
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "results").exists()


def test_console_command_runs(tmp_path):
    script = Path(sys.executable).with_name("sweeper")
    done = subprocess.run(
        [script, "schedule", "--lr", "slice(1e-5,1e-3)", "--steps", "3", "--json", "--no-plot"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ},
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["rows"]) == 3


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    # `sweeper schedule --json | head`: the reader closes the pipe long before the end.
    command = [sys.executable, "-m", "sweeper.cli", "schedule", "--steps", "20000", "--json", "--no-plot"]
    schedule = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert schedule.stdout.read(100).startswith(b"{")
    schedule.stdout.close()
    error = schedule.stderr.read().decode()
    assert schedule.wait(60) == 141, error  # as a shell reports SIGPIPE
    assert error == ""


def test_options_may_follow_the_overrides(capsys, tmp_path):
    code, out, _ = run_schedule(capsys, tmp_path, "shape=constant", "--steps", "2", "--json", "--no-plot")
    assert code == 0
    assert json.loads(out)["shape"]["name"] == "constant"


SHAPE_CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "conf" / "shape").glob("*.yaml"))


@pytest.mark.parametrize("shape", SHAPE_CONFIGS)
def test_json_for_every_shape_is_the_schedule_and_the_shapes_settings(capsys, tmp_path, shape):
    code, out, _ = run_schedule(capsys, tmp_path, "--json", "--no-plot", "--steps", "30", "--groups", "2", f"shape={shape}")
    assert code == 0
    document = json.loads(out)  # a function shape's resolved function is not in it (it cannot be JSON)
    cfg = compose_config([f"shape={shape}"])
    schedule = schedule_of(cfg, steps=30, n_groups=2)
    assert [[row["lr_0"], row["lr_1"], row["momentum"]] for row in document["rows"]] == [
        [*schedule.at(s)[0], schedule.at(s)[1]] for s in range(30)
    ]
    settings = {k: v for k, v in document["shape"].items() if k != "name"}
    written = {k: v for k, v in json.loads(json.dumps(dict(cfg.shape), default=list)).items() if k not in ("_target_", "name")}
    assert settings.keys() == written.keys()  # every setting of the config, and only those


@pytest.mark.parametrize("shape", ["torch_cyclic", "sequential", "torch_step"])
def test_table_and_plot_of_the_torch_shapes(capsys, tmp_path, shape):
    code, out, _ = run_schedule(capsys, tmp_path, "--steps", "60", "--every", "10", f"shape={shape}", "shape.step_per=epoch")
    assert code == 0
    assert "step_per='epoch'" in out  # the caption prints the shape as it ran
    assert (tmp_path / "results" / f"schedule-steps-60_shape-{shape}_shape.step_per-epoch.png").stat().st_size > 0  # by the options
