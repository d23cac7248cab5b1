"""Epoch checkpoints (sweeper.training.checkpoints): a trial resumed from the checkpoint a dead worker left
trains on to curves and weights bitwise equal to an uninterrupted run's (CPU, deterministic), with
its dropout, data order and schedule where they were; the file is written atomically, read
without running code, and removed when the trial ends. The end-to-end test kills a real sweep
worker mid-trial and checks the retried trial against an uninterrupted rerun of it."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import optuna
import pytest
import torch
from helpers.forked_cli import popen, run_sweeper
from helpers.payloads import RunsCodeWhenLoaded
from helpers.processes import with_tests_on_path
from helpers.waiting import wait_for_file, wait_until
from mlflow import MlflowClient
from optuna.trial import TrialState
from torch import nn

from sweeper.records.run_record import result_curves
from sweeper.training.checkpoints import EpochCheckpoints, load_checkpoint, save_atomically
from sweeper.training.trainer import prepare, run
from sweeper.trial.events import Reporter, StepEvent, TrainerHook

SMALL = ["data=synthetic", "data.source.n_samples=300", "train.batch_size=32", "train.threads=1", "train.deterministic=true"]


class DropoutMLP(nn.Module):
    """An MLP whose dropout draws from torch's global generator: a resume must restore it too."""

    def __init__(self, in_shape, num_classes) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0], 64), nn.ReLU(), nn.Dropout(0.3)),
            nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3)),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


DROPOUT_MODEL = ["model.net._target_=test_checkpoints.DropoutMLP", "~model.net.hidden"]


class KeepCheckpointAt(Reporter):
    """What a worker killed during epoch `epoch` leaves behind: a copy of the checkpoint file as
    it is when that epoch's steps are reported (the previous epoch's checkpoint)."""

    def __init__(self, source: Path, epoch: int, kept: Path) -> None:
        self.source, self.epoch, self.kept = source, epoch, kept

    def on_step(self, event: StepEvent) -> None:
        if event.epoch == self.epoch and not self.kept.exists():
            shutil.copyfile(self.source, self.kept)


class Heard(Reporter):
    """Every step and epoch a reporter hears, in order."""

    def __init__(self) -> None:
        self.steps, self.epochs = [], []

    def on_step(self, event) -> None:
        self.steps.append(event)

    def on_epoch(self, event) -> None:
        self.epochs.append(event)


def trained(cfg, reporters):
    trial = prepare(cfg)
    return run(trial, reporters), trial.model.state_dict()


@pytest.mark.parametrize(
    "settings, killed_in",
    [
        pytest.param(["train.epochs=3"], 2, id="one-cycle"),
        # fine_tune: killed in the first unfrozen epoch, resumed across the phase boundary
        pytest.param(["train.freeze_epochs=1", "train.epochs=2", "shape=fastai_fine_tune"], 1, id="fine-tune"),
    ],
)
def test_a_trial_resumed_from_a_checkpoint_equals_an_uninterrupted_run_bitwise(trial_config, tmp_path, settings, killed_in):
    cfg = trial_config(*SMALL, *DROPOUT_MODEL, *settings)
    reference, reference_weights = trained(cfg, [])
    assert reference.status == "finished"

    # the run a worker was killed in: its checkpoint, as the kill left it, is kept aside
    first, kept = tmp_path / "trial-0.pt", tmp_path / "left-by-the-dead-worker.pt"
    interrupted, _ = trained(cfg, [EpochCheckpoints(first, announce=lambda line: None), KeepCheckpointAt(first, killed_in, kept)])
    assert interrupted.status == "finished" and kept.exists()
    assert not first.exists()  # removed when its trial ended

    heard, lines = Heard(), []
    hook = EpochCheckpoints(tmp_path / "trial-1.pt", earlier=[kept], announce=lines.append)
    resumed, resumed_weights = trained(cfg, [hook, heard])
    assert hook.resumed_from == kept and f"after epoch {killed_in}" in lines[0]
    assert resumed.status == "finished"
    assert result_curves(resumed) == result_curves(reference)  # every step and epoch value, bitwise
    assert heard.steps == reference.steps and heard.epochs == reference.epochs  # replayed, then trained
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
    assert not kept.exists() and not (tmp_path / "trial-1.pt").exists()  # both gone with the trial


def test_without_a_checkpoint_the_retried_trial_starts_from_its_first_step(trial_config, tmp_path):
    cfg = trial_config(*SMALL, "train.epochs=2")
    hook = EpochCheckpoints(tmp_path / "trial-1.pt", earlier=[tmp_path / "trial-0.pt"], announce=lambda line: None)
    result, _ = trained(cfg, [hook])
    assert hook.resumed_from is None
    assert result_curves(result) == result_curves(trained(cfg, [])[0])


def tampered(payload: dict, change: str) -> dict:
    """A checkpoint sweeper wrote, changed as a recorder of ill will (or another model's run) might."""
    model = dict(payload["model"])
    first = next(iter(model))
    if change == "missing-key":
        del model[first]
    elif change == "extra-key":
        model["planted.weight"] = torch.zeros(1)
    elif change == "shape":
        model[first] = torch.zeros(*model[first].shape[:-1], model[first].shape[-1] + 1)
    elif change == "dtype":
        model[first] = model[first].double()
    elif change == "not-a-tensor":
        model[first] = [1.0]
    elif change == "optimizer":
        return {**payload, "optimizer": {"state": {}, "param_groups": [{"params": [0]}]}}
    elif change == "rng":
        return {**payload, "torch_rng": torch.zeros(3, dtype=torch.uint8)}
    elif change == "no-steps":
        return {key: value for key, value in payload.items() if key != "steps"}
    return {**payload, "model": model}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("missing-key", "keys are not the model's"),
        ("extra-key", "unexpected ['planted.weight']"),
        ("shape", "has shape"),
        ("dtype", "torch.float64, the model's torch.float32"),
        ("not-a-tensor", "not a tensor"),
        ("optimizer", "does not fit this trial"),
        ("rng", "does not fit this trial"),
        ("no-steps", "does not fit this trial (KeyError"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_model_is_ignored_and_the_trial_starts_afresh(trial_config, tmp_path, change, said):
    cfg = trial_config(*SMALL, "train.epochs=2")
    written = tmp_path / "trial-0.pt"
    trained(cfg, [EpochCheckpoints(written, announce=lambda line: None), KeepCheckpointAt(written, 1, tmp_path / "kept.pt")])
    kept = tmp_path / "kept.pt"
    save_atomically(tampered(load_checkpoint(kept), change), kept)
    lines = []
    hook = EpochCheckpoints(tmp_path / "trial-1.pt", earlier=[kept], announce=lines.append)
    result, weights = trained(cfg, [hook])
    assert hook.resumed_from is None and result.status == "finished", result.reason
    assert len(lines) == 1 and str(kept) in lines[0] and said in lines[0] and "starts afresh" in lines[0], lines
    reference, reference_weights = trained(cfg, [])
    assert result_curves(result) == result_curves(reference)  # afresh: nothing of the checkpoint was kept
    for name, tensor in reference_weights.items():
        assert torch.equal(weights[name], tensor), name


@pytest.mark.parametrize(("every", "writes"), [(0, 2), (3600, 0)])
def test_a_trial_checkpoints_once_its_training_since_the_last_one_reaches_checkpoint_every(
    trial_config, tmp_path, monkeypatch, every, writes
):
    """3 epochs: after the first two (none after the last); none while less than `every` seconds
    of training went by (a short trial starts again at less cost than its writes)."""
    written = []
    monkeypatch.setattr("sweeper.training.checkpoints.save_atomically", lambda payload, path: written.append(payload))
    result = run(prepare(trial_config(*SMALL, "train.epochs=3")), [EpochCheckpoints(tmp_path / "trial-0.pt", every=every)])
    assert result.status == "finished" and len(written) == writes


def test_a_checkpoint_holds_plain_tensors_and_is_written_atomically(tmp_path):
    path = tmp_path / "trial-0.pt"
    save_atomically({"format": 1, "weights": torch.arange(3.0)}, path)
    assert torch.equal(load_checkpoint(path)["weights"], torch.arange(3.0))

    class Unsavable:
        def __reduce__(self):
            raise RuntimeError("the disk filled up half way")

    with pytest.raises(RuntimeError):
        save_atomically({"format": 1, "weights": Unsavable()}, path)
    assert torch.equal(load_checkpoint(path)["weights"], torch.arange(3.0))  # the last whole one stays
    assert [p.name for p in tmp_path.iterdir()] == ["trial-0.pt"]  # no temporary file left


def test_a_checkpoint_that_would_run_code_is_not_resumed_from(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "trial-0.pt"
    torch.save({"format": 1, "model": RunsCodeWhenLoaded(str(marker))}, path)  # a plain pickle, not weights
    assert load_checkpoint(path) is None
    assert not marker.exists()


def test_hooks_see_the_trial_and_every_epoch_before_the_next(trial_config):
    class Watch(TrainerHook):
        def __init__(self) -> None:
            self.after = []

        def after_epoch(self, result) -> None:
            self.after.append((len(result.epochs), self.trial.model.training))

    watch = Watch()
    trained(trial_config(*SMALL, "train.epochs=2"), [watch])
    assert watch.after == [(1, False), (2, False)]  # after each evaluation (eval mode), in order


# --- a real worker killed mid-trial -----------------------------------------------------------

REAL = [
    *SMALL, "train.epochs=3", "sweep.cpu_threads=1", "sweep.poll=0.2", "sweep.live=false", "pruner=none",
    "sampler.seed=0", "sweep.trainer=helpers.gated_trainer.GatedTrainer", "sweep.workers=2", "sweep.n_trials=2",
    # the killed worker's trial is failed and queued again by the sweep, which sees the worker
    # die, not by a heartbeat check (10 minutes after the kill, past the test's limits)
    "storage.heartbeat_interval=1", "storage.grace_period=600",
    "sweep.checkpoint_every=0",  # after every epoch: these trials take a second
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_worker_killed_mid_trial_is_resumed_elsewhere_to_the_curves_of_an_uninterrupted_run(tmp_path):
    gates = tmp_path / "gates"
    # The first trial holds at its second epoch's first steps (its first epoch checkpointed)
    # until its worker is killed; the other worker then retries it from that checkpoint.
    env = {**os.environ, "PYTHONPATH": with_tests_on_path(), "TRIAL_GATES": str(gates), "TRIAL_HOLD_AFTER": "0", "TRIAL_HOLD_MAX": "1"}
    sweep = popen([sys.executable, "-m", "sweeper.cli", "sweep", *REAL], tmp_path, env, session=True)
    try:
        pid = wait_for_file(gates / "held-0", sweep)
        folder = tmp_path / "results" / "sweeps" / "mlp-synthetic"

        # The held trial's checkpoint, after its first epoch; the other trial may hold one too until
        # it ends (its own is removed then): the held one is the file left alone.
        def alone():
            found = list((folder / "checkpoints").glob("trial-*.pt"))
            return found if len(found) == 1 else None

        (checkpoint,) = wait_until(alone, "the held trial's checkpoint alone", sweep)
        assert len(load_checkpoint(checkpoint)["epochs"]) == 1
        os.kill(int(pid), signal.SIGKILL)
        out, err = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait(30)
    assert sweep.returncode == 0, out[-3000:] + err[-3000:]

    study = optuna.load_study(study_name="mlp-synthetic", storage=f"sqlite:///{tmp_path}/results/studies.db")
    victim = int(checkpoint.stem.removeprefix("trial-"))
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert study.trials[victim].state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    logs = "".join(p.read_text() for p in folder.glob("worker-*.log"))
    assert f"resumed from {checkpoint.relative_to(tmp_path)} after epoch 1" in logs
    assert not list((folder / "checkpoints").iterdir())  # removed once the retry ended

    # The retried trial's MLflow run against a rerun of it from its first step, uninterrupted.
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("mlp-synthetic").experiment_id], f"tags.trial = '{retry.number}'")
    rerun = run_sweeper(["rerun", run.info.run_id, "--strict", "--allow-module", "helpers"], tmp_path, env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "(bitwise equal)" in rerun.stdout
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(int(run.data.params["total_steps"])))

    # tracking.save_model=best (the default): the sweep's best trial kept its weights, and
    # `sweeper export NAME` writes them out
    (best,) = client.search_runs([run.info.experiment_id], f"tags.trial = '{study.best_trial.number}'")
    kept = torch.load(client.download_artifacts(best.info.run_id, "model.pt", str(tmp_path)), weights_only=True)
    export = run_sweeper(["export", "mlp-synthetic", "best.pt"], tmp_path, env, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    exported = torch.load(tmp_path / "best.pt", weights_only=True)
    assert exported.keys() == kept.keys() and all(torch.equal(exported[k], kept[k]) for k in kept)
