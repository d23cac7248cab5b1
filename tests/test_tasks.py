"""The task group: the loss a trial trains on and the metrics it reports. Metrics against
scikit-learn's over the whole validation set, losses against torch's own; the trainer and lr_find
on the task's loss; a custom loss through `sweeper train` and a regression sweep, both real
processes read back from MLflow with its own client."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from helpers import custom_task
from helpers.forked_cli import run_sweeper
from helpers.processes import with_tests_on_path
from omegaconf import OmegaConf
from sklearn import metrics as sk

import sweeper.training.trainer
from sweeper.boundary.recorded_config import Allowed, check_config
from sweeper.config import ConfigError, compose_config
from sweeper.training.lr_find import lr_find
from sweeper.training.trainer import available_metrics, evaluate, prepare, run
from sweeper.zoo.data import synthetic_regression
from sweeper.zoo.tasks import CLASSIFICATION, accuracy, build_task, mae, mse, r2

REGRESSION = ("data=synthetic_regression", "task=regression", "train.objective=r2", "train.device=cpu")
HUBER = ("task.loss._target_=helpers.custom_task.huber",)


def seeded(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def exact(values: torch.Tensor):
    """As scikit-learn should see float32 values: in float64 (it would compute in float32)."""
    return values.detach().double().numpy()


# --- metrics and losses against independent references -------------------------------------------


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_metrics_equal_sklearns(outputs):
    predicted, actual = seeded(200, outputs), seeded(200, outputs, seed=1) + 0.5 * seeded(200, outputs)
    assert mse(predicted, actual) == pytest.approx(sk.mean_squared_error(exact(actual), exact(predicted)), rel=1e-12)
    assert mae(predicted, actual) == pytest.approx(sk.mean_absolute_error(exact(actual), exact(predicted)), rel=1e-12)
    assert r2(predicted, actual) == pytest.approx(sk.r2_score(exact(actual), exact(predicted)), rel=1e-12)  # the mean over outputs


@pytest.mark.parametrize(("predicted", "expected"), [([2.0, 2.0, 2.0], 1.0), ([2.0, 2.5, 2.0], 0.0)])
def test_r2_of_constant_targets_is_sklearns(predicted, expected):
    # SS_tot is 0: sklearn scores 1 for an exact prediction, else 0 (never a division by zero)
    actual = [2.0, 2.0, 2.0]
    assert r2(torch.tensor(predicted), torch.tensor(actual)) == sk.r2_score(actual, predicted) == expected


def test_accuracy_equals_sklearns():
    logits, labels = seeded(300, 5), torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(2))
    assert accuracy(logits, labels) == sk.accuracy_score(labels, logits.argmax(dim=1))


def test_the_built_in_losses_are_torchs_own():
    regression = build_task(compose_config(["task=regression", "tracking=none"]).task)
    predicted, actual = seeded(50, 1), seeded(50, 1, seed=1)
    assert torch.equal(regression.loss(predicted, actual), torch.nn.functional.mse_loss(predicted, actual))
    classification = build_task(compose_config(["tracking=none"]).task)
    logits, labels = seeded(50, 4), torch.arange(50) % 4
    assert torch.equal(classification.loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))


def test_a_custom_loss_by_target_takes_its_own_arguments():
    task = build_task(compose_config(["task=regression", "tracking=none", *HUBER, "+task.loss.delta=0.5"]).task)
    predicted, actual = seeded(80, 1), 2 * seeded(80, 1, seed=1)
    # the test's own huber against torch's
    assert task.loss(predicted, actual).item() == pytest.approx(
        torch.nn.functional.huber_loss(predicted, actual, delta=0.5).item(), rel=1e-6
    )


def test_metrics_are_computed_over_the_whole_validation_set_not_per_batch(monkeypatch):
    data = synthetic_regression(n_samples=400, n_features=6, seed=3)
    model = torch.nn.Linear(6, 1)
    torch.nn.init.constant_(model.weight, 0.1)
    monkeypatch.setattr(sweeper.training.trainer, "VALID_BATCH", 7)  # many uneven batches
    task = build_task(compose_config(["task=regression", "tracking=none"]).task)
    got = evaluate(model, data, torch.device("cpu"), task=task)
    with torch.no_grad():
        predicted = model(data.valid_x)
    actual = data.valid_y
    assert got["r2"] == pytest.approx(
        sk.r2_score(exact(actual), exact(predicted)), rel=1e-6
    )  # outputs of batches of 7 and of the whole set differ in float32 rounding
    assert got["mse"] == pytest.approx(sk.mean_squared_error(exact(actual), exact(predicted)), rel=1e-6)
    assert got["mae"] == pytest.approx(sk.mean_absolute_error(exact(actual), exact(predicted)), rel=1e-6)
    assert got["loss"] == pytest.approx(torch.nn.functional.mse_loss(predicted, actual).item(), rel=1e-6)
    per_batch = [sk.r2_score(exact(actual[i : i + 7]), exact(predicted[i : i + 7])) for i in range(0, len(actual), 7)]
    assert abs(sum(per_batch) / len(per_batch) - got["r2"]) > 1e-3  # what a mean of batches would have said


# --- the config group ---------------------------------------------------------------------------


def test_classification_is_the_default_and_the_task_of_configs_recorded_without_one():
    cfg = compose_config(["tracking=none"])
    assert OmegaConf.to_container(cfg.task) == CLASSIFICATION  # conf/task/classification.yaml is the built-in
    assert available_metrics(cfg) == ("accuracy", "loss")
    del cfg.task  # a config recorded before the task was a group
    assert available_metrics(cfg) == ("accuracy", "loss")


def test_available_metrics_follow_the_configured_task():
    assert available_metrics(compose_config(["task=regression", "tracking=none"])) == ("mse", "mae", "r2", "loss")
    custom = compose_config(["task=regression", "tracking=none", "+task.metrics.max_error._target_=helpers.custom_task.max_error",
                             "+task.metrics.max_error._partial_=true"])  # fmt: skip
    assert available_metrics(custom) == ("mse", "mae", "r2", "max_error", "loss")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=regression", "train.objective=accuracy"], "choose one of ['mse', 'mae', 'r2', 'loss']"),
        (["train.objective=r2"], "choose one of ['accuracy', 'loss']"),
        (["task=regression", "train.objective=r2"], "for class labels choose task=classification"),  # digits' labels
        (["data=synthetic_regression"], "for float targets choose task=regression"),
        (["task=regression", "train.objective=r2", "data=synthetic_regression", "task.loss._partial_=false"], "task.loss: cannot build"),
        (["task=regression", "train.objective=r2", "task.targets=labels"], "task.targets"),
    ],
)
def test_a_task_that_does_not_fit_is_a_config_error_before_training(trial_config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        prepare(trial_config("train.device=cpu", *overrides))


def test_a_recorded_regression_config_builds_only_allowed_callables():
    cfg = compose_config([*REGRESSION, "tracking=none"])
    names = {i.name for i in check_config(OmegaConf.to_container(cfg, resolve=True), Allowed())}  # no refusal
    assert {"sweeper.zoo.data.synthetic_regression", "torch.nn.functional.mse_loss", "sweeper.zoo.tasks.r2"} <= names


# --- the trainer and lr_find on the task's loss ----------------------------------------------------


def test_the_trainer_on_regression_data_reports_the_tasks_metrics_and_trains_on_its_loss(trial_config):
    trial = prepare(trial_config(*REGRESSION, *HUBER, "train.epochs=3", "train.batch_size=32"))
    result = run(trial)
    assert result.status == "finished", result.reason
    assert [set(e.metrics) for e in result.epochs] == [{"mse", "mae", "r2", "loss"}] * 3
    assert result.objective == result.epochs[-1].metrics["r2"] > 0.5  # it learns
    assert result.epochs[-1].metrics["r2"] > result.epochs[0].metrics["r2"]
    # what the last epoch reported, recomputed from the trained model with the references
    with torch.no_grad():
        trial.model.eval()
        predicted = trial.model(trial.data.valid_x)
    actual = trial.data.valid_y
    last = result.epochs[-1].metrics
    assert last["r2"] == pytest.approx(sk.r2_score(exact(actual), exact(predicted)), rel=1e-6)
    assert last["mse"] == pytest.approx(sk.mean_squared_error(exact(actual), exact(predicted)), rel=1e-6)
    assert last["mae"] == pytest.approx(sk.mean_absolute_error(exact(actual), exact(predicted)), rel=1e-6)
    huber = torch.nn.functional.huber_loss(predicted, actual).item()
    assert result.epochs[-1].valid_loss == last["loss"] == pytest.approx(huber, rel=1e-5)  # the task's loss, not MSE
    assert last["loss"] != pytest.approx(last["mse"], rel=1e-3)


def test_lr_find_uses_the_tasks_loss(trial_config):
    custom_task.CALLS.clear()
    result = lr_find(trial_config(*REGRESSION, "task.loss._target_=helpers.custom_task.huber_counted"), end_lr=1e-1, num_it=12)
    assert len(custom_task.CALLS) == len(result.lrs) == 12  # one call per batch of the test, no other loss
    assert result.losses[0] == pytest.approx(custom_task.CALLS[0], rel=1e-6)  # the smoothed curve starts at it


# --- end to end: real processes, MLflow read back ----------------------------------------------------


def sweeper_process(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": with_tests_on_path()}  # custom_task importable
    for variable in ("SWEEPER_STORAGE_URL", "MLFLOW_TRACKING_URI", "SWEEPER_CONFIG_PATH"):
        env.pop(variable, None)
    return run_sweeper(args, folder, env, timeout)


def mlflow_runs(folder: Path, experiment: str, kind: str | None = None) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/results/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, experiment
    where = f"tags.`sweeper.kind` = '{kind}'" if kind else ""
    return client.search_runs([found.experiment_id], where, max_results=100), client


@pytest.mark.slow
def test_a_custom_loss_trial_through_sweeper_train_records_its_metrics_in_mlflow(tmp_path):
    done = sweeper_process(tmp_path, "train", "--name", "huber", "--quiet", *REGRESSION, *HUBER,
                           "train.epochs=2", "train.batch_size=32", "sweep.name=regression-huber")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (trial_run,), client = mlflow_runs(tmp_path, "train")  # train runs are filed in their own experiment
    assert trial_run.info.status == "FINISHED"
    assert trial_run.data.params["task.loss._target_"] == "helpers.custom_task.huber"  # the task is a param
    assert trial_run.data.params["task.name"] == "regression"
    for name in ("valid_mse", "valid_mae", "valid_r2", "valid_loss", "objective"):
        history = client.get_metric_history(trial_run.info.run_id, name)
        assert len(history) == 2, (name, history)  # one value an epoch
    metrics = trial_run.data.metrics
    assert metrics["objective"] == metrics["valid_r2"] > 0  # the objective is the task's r2
    assert metrics["valid_loss"] != pytest.approx(metrics["valid_mse"], rel=1e-3)  # huber, not MSE


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_regression_sweep_records_r2_for_every_trial(tmp_path):
    done = sweeper_process(
        tmp_path, "sweep", "data=synthetic_regression", "task=regression", "train.objective=r2",
        "train.direction=maximize", "sweep.n_trials=2", "train.epochs=1", "train.device=cpu", "sweep.workers=1",
        "sweep.cpu_threads=1", "sweep.live=false", "sweep.poll=0.2", "sampler.seed=0", "pruner=none",
        "tracking.schedule_plot=false", timeout=360,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="mlp-synthetic_regression", storage=f"sqlite:///{tmp_path}/results/studies.db")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 2
    runs, _ = mlflow_runs(tmp_path, "mlp-synthetic_regression", "trial")
    assert len(runs) == 2
    told = {t.number: t.value for t in finished}
    for trial_run in runs:
        metrics = trial_run.data.metrics
        assert {"valid_mse", "valid_mae", "valid_r2", "valid_loss"} <= set(metrics)
        assert metrics["objective"] == metrics["valid_r2"] == told[int(trial_run.data.tags["trial"])]  # Optuna was told r2
        assert trial_run.data.params["task.name"] == "regression"
