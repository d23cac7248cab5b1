"""Keeping the trained model (sweeper.training.saved_models, `sweeper export`): the weights go to the run's
MLflow artifacts as a state dict that plain torch loads with weights_only=True, and evaluate to the
run's recorded final metrics; which runs keep them follows tracking.save_model; `sweeper export`
writes them out, refusing every mistake in one line (exit 2, nothing written) and any artifact
that is not plain tensors, without running code from it."""

from __future__ import annotations

import optuna
import pytest
import torch
from helpers.payloads import RunsCodeWhenLoaded
from mlflow import MlflowClient

from sweeper.commands.train import reporters_for
from sweeper.training.saved_models import MODEL_ARTIFACT, SAVED_TAG, best_in_study, best_so_far
from sweeper.training.trainer import evaluate, prepare, run

SMALL = ["data=synthetic", "data.source.n_samples=300", "train.batch_size=32", "train.epochs=2", "train.threads=1"]


def trained_run(tracked_config, *overrides: str):
    """`sweeper train`'s reporters around one trial: (client, its MLflow run, the trial, its result)."""
    cfg = tracked_config(*SMALL, *overrides)
    trial = prepare(cfg)
    result = run(trial, reporters_for(cfg, True, "kept", list(overrides)))
    client = MlflowClient(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.train_experiment).experiment_id
    (found,) = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)  # this one
    return client, found, trial, result


def test_a_train_run_keeps_weights_that_plain_torch_loads_and_that_score_what_the_run_recorded(tracked_config, tmp_path):
    client, found, trial, result = trained_run(tracked_config)
    assert result.status == "finished" and found.data.tags[SAVED_TAG] == MODEL_ARTIFACT
    path = client.download_artifacts(found.info.run_id, MODEL_ARTIFACT, str(tmp_path))
    state = torch.load(path, weights_only=True)
    # a fresh model of the same config, given the kept weights, scores the run's last epoch exactly
    fresh = prepare(trial.config)
    fresh.model.load_state_dict(state)
    metrics = evaluate(fresh.model, fresh.data, fresh.device, task=fresh.task)
    assert metrics["accuracy"] == found.data.metrics["valid_accuracy"]
    assert metrics["loss"] == found.data.metrics["valid_loss"]
    for name, tensor in trial.model.state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_save_model_none_keeps_no_weights(tracked_config):
    client, found, _, result = trained_run(tracked_config, "tracking.save_model=none")
    assert result.status == "finished"
    assert SAVED_TAG not in found.data.tags
    assert MODEL_ARTIFACT not in {a.path for a in client.list_artifacts(found.info.run_id)}


def test_a_run_that_did_not_finish_keeps_no_weights(tracked_config):
    client, found, _, result = trained_run(tracked_config, "lr=single", "lr.high=1e6", "optimizer=sgd")
    assert result.status == "diverged"
    assert SAVED_TAG not in found.data.tags


def test_the_best_so_far_is_what_no_complete_trial_beats_or_dominates():
    assert best_so_far([0.9], ["maximize"], [[0.8], [0.9]])  # a tie keeps both
    assert not best_so_far([0.7], ["maximize"], [[0.8]])
    assert best_so_far([0.2], ["minimize"], [[0.3]])
    # several objectives: kept unless another is as good in both and better in one
    directions = ["maximize", "minimize"]
    assert best_so_far([0.9, 0.5], directions, [[0.8, 0.4], [0.95, 0.6]])  # on the front
    assert not best_so_far([0.9, 0.5], directions, [[0.9, 0.4]])

    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.create_trial(value=0.8))
    study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.FAIL))
    assert best_in_study(study, ["maximize"], 0.85) and not best_in_study(study, ["maximize"], 0.75)


# --- sweeper export ---------------------------------------------------------------------------


def test_export_writes_a_run_s_weights_and_refuses_every_mistake(tracked_config, sweeper_cli, tmp_path):
    client, found, trial, _ = trained_run(tracked_config)
    results = f"results_dir={tmp_path}/results"
    done = sweeper_cli("export", found.info.run_id, "weights/model.pt", results)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"MLflow run {found.info.run_id}" in done.stdout
    state = torch.load(tmp_path / "weights" / "model.pt", weights_only=True)
    for name, tensor in trial.model.state_dict().items():
        assert torch.equal(state[name], tensor), name

    _, bare, _, _ = trained_run(tracked_config, "tracking.save_model=none")
    mistakes = {
        # (arguments): what the one line must name
        (found.info.run_id, "weights/model.pt"): "exists already",
        ("../elsewhere", "other.pt"): "cannot name a sweep",
        ("no-such-sweep", "other.pt"): "no sweep 'no-such-sweep' with kept weights",
        (bare.info.run_id, "other.pt"): "kept no weights",
        (found.info.run_id, "other.pt", "tracking=none"): "tracking is off",
    }
    for arguments, said in mistakes.items():
        done = sweeper_cli("export", *arguments, results)
        assert done.returncode == 2, (arguments, done.stderr[-2000:])
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("sweeper export: error:") and said in line, (arguments, line)
    assert not (tmp_path / "other.pt").exists()


def test_export_refuses_an_artifact_that_is_not_plain_tensors_without_running_it(tracked_config, sweeper_cli, tmp_path):
    client, found, _, _ = trained_run(tracked_config)
    marker = tmp_path / "code-ran"
    planted = tmp_path / "planted" / MODEL_ARTIFACT
    planted.parent.mkdir()
    torch.save({"head.weight": RunsCodeWhenLoaded(str(marker))}, planted)  # a pickle that opens a file when loaded
    client.log_artifact(found.info.run_id, str(planted))  # over the run's own model.pt
    done = sweeper_cli("export", found.info.run_id, "out.pt", f"results_dir={tmp_path}/results")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is not a state dict sweeper saved" in done.stderr
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize(
    "setting, named",
    [
        ("tracking.save_model=sometimes", "tracking.save_model"),
        ("sweep.checkpoints=maybe", "sweep.checkpoints"),
        ("sweep.checkpoint_every=-1", "sweep.checkpoint_every"),
    ],
)
def test_a_bad_setting_stops_train_and_sweep_in_one_line_with_nothing_written(sweeper_cli, tmp_path, setting, named):
    for command in (["train", *SMALL, setting], ["sweep", *SMALL, setting, "--dry-run"]):
        if command[0] == "train" and named.startswith("sweep."):
            continue  # a sweep's setting: `sweeper train` has no trials to checkpoint
        done = sweeper_cli(*command)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        (line,) = done.stderr.strip().splitlines()
        assert named in line, line
    assert not (tmp_path / "results").exists()
