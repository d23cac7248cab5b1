"""`sweeper train`: one trial from overrides, its result kept under results/train/."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from sweeper.cli import main


def test_train_prints_epochs_and_saves_config_and_curves(tmp_path, capsys):
    code = main(["train", "--name", "first", "train.epochs=2", "tracking.enabled=false", f"results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch 1/2" in out and "epoch 2/2" in out and "finished" in out
    folder = tmp_path / "train" / "first"
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "finished" and len(result["epochs"]) == 2
    assert len(result["steps"]) == result["epochs"][-1]["step"]  # every step's curve point is kept
    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.train.epochs == 2 and saved.results_dir == str(tmp_path)  # resolved, rerunnable


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    code = main(["train", "lr=geometric", "lr.low=1e-2", "lr.high=1e-4", f"results_dir={tmp_path}"])
    assert code == 2
    assert "low > high" in capsys.readouterr().err
    assert not (tmp_path / "train").exists()


def test_a_diverged_trial_exits_1_and_keeps_its_result(tmp_path, capsys):
    code = main(["train", "--name", "boom", "--quiet", "optimizer=sgd", "lr=single", "lr.high=1e4",
                 "tracking.enabled=false", f"results_dir={tmp_path}"])
    assert code == 1
    assert json.loads((tmp_path / "train" / "boom" / "result.json").read_text())["status"] == "diverged"
