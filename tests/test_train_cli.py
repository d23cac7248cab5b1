"""`sweeper train`: one trial from overrides, its progress and summary, its result kept under
results/train/, and bad input stopped before anything is written."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from sweeper.cli import main

QUICK = ["train.epochs=2", "train.batch_size=128", "train.device=cpu", "tracking=none"]


def test_train_prints_progress_and_a_summary_and_keeps_config_and_curves(tmp_path, capsys):
    code = main(["train", "--name", "first", *QUICK, f"results_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch 1/2" in out and "epoch 2/2" in out  # a line per epoch
    summary = out[out.index("finished:") :]
    for fragment in ("accuracy 0.", "2 epochs", "20 steps", "on cpu", "peak lr per layer group"):
        assert fragment in summary, summary
    folder = tmp_path / "train" / "first"
    result = json.loads((folder / "result.json").read_text())
    assert result["status"] == "finished" and len(result["epochs"]) == 2
    assert [s["step"] for s in result["steps"]] == list(range(20))  # every step's curve point is kept
    saved = OmegaConf.load(folder / "config.yaml")
    assert saved.train.epochs == 2 and saved.results_dir == str(tmp_path)  # resolved: it reruns as is
    assert isinstance(saved.train.threads, int)  # the thread count it ran with, for an exact rerun


def test_the_trainer_uses_what_sweeper_schedule_prints(tmp_path, capsys):
    settings = ["lr=fastai", "lr.high=3e-3", "shape=torch_one_cycle", "shape.pct_start=0.4", f"results_dir={tmp_path}"]
    assert main(["train", "--name", "run", "--quiet", *QUICK, *settings]) == 0
    steps = json.loads((tmp_path / "train" / "run" / "result.json").read_text())["steps"]
    capsys.readouterr()
    assert main(["schedule", "--json", "--no-plot", "--groups", "3", "--steps", str(len(steps)), *settings]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [s["lrs"] for s in steps] == [[r["lr_0"], r["lr_1"], r["lr_2"]] for r in rows]
    assert [s["momentum"] for s in steps] == [r["momentum"] for r in rows]


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    # tracking stays on (the default): not even the MLflow store may be created
    code = main(["train", "lr=geometric", "lr.low=1e-2", "lr.high=1e-4", f"results_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "low > high" in err and err.count("\n") == 1  # one line that says what to fix
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_missing_data_path_exits_2_naming_the_setting(tmp_path, capsys):
    code = main(["train", "data=tensors", "data.shape=[4]", "data.num_classes=2", f"results_dir={tmp_path}"])
    assert code == 2
    assert "data.source.path" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_name_already_used_is_refused(tmp_path, capsys):
    (tmp_path / "train" / "taken").mkdir(parents=True)
    assert main(["train", "--name", "taken", *QUICK, f"results_dir={tmp_path}"]) == 2
    assert "choose another --name" in capsys.readouterr().err


def test_a_diverged_trial_exits_1_and_keeps_its_result(tmp_path, capsys):
    code = main(["train", "--name", "boom", "optimizer=sgd", "lr=single", "lr.high=1e4", *QUICK, f"results_dir={tmp_path}"])
    assert code == 1
    out = capsys.readouterr().out
    assert "diverged" in out and "reason: loss became" in out
    result = json.loads((tmp_path / "train" / "boom" / "result.json").read_text())
    assert result["status"] == "diverged" and result["diverged_step"] == len(result["steps"])


def test_a_password_in_the_config_never_reaches_the_saved_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWEEPER_STORAGE_URL", "postgresql://sweeper:Hunter2secret@127.0.0.1:1/db")
    code = main(
        ["train", "--name", "masked", "--quiet", "storage=postgres", "train.epochs=1", "tracking.enabled=false", f"results_dir={tmp_path}"]
    )
    assert code == 0
    saved = (tmp_path / "train" / "masked" / "config.yaml").read_text()
    assert "Hunter2secret" not in saved and "postgresql://sweeper:***@127.0.0.1:1/db" in saved
    assert "Hunter2secret" not in capsys.readouterr().out
