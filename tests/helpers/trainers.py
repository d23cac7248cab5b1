"""Trainers that sweeps load by name (`sweep.trainer=helpers.trainers.StandInTrainer`): a fast
deterministic stand-in and one that fills its disk mid-trial; they load no torch (the real trainer
paced by the test's gates is helpers.gated_trainer)."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
from pathlib import Path

from helpers.gates import Gates
from sweeper.trial.events import EpochEvent, Reporter, StartEvent, TrialResult


class StandInTrainer:
    """A fast, deterministic stand-in for sweeper.training.trainer with the same interface.

    Sweep workers are separate processes, so they load it by name (the stand_in_sweep fixture).
    Its accuracy rises with the epochs and peaks at lr.high = 3e-3, so pruners see clearly
    better and worse trials. Environment knobs:
    STAND_IN_EPOCH_SECONDS (sleep per epoch: work, its length never decides a test),
    STAND_IN_RAISE_SHAPE (raise for that shape), STAND_IN_DIVERGE_SHAPE (end as "diverged" for
    that shape), STAND_IN_MODULES (a folder: each trial writes there which MLflow modules its
    process has loaded), and the TRIAL_* gates (Gates). It reports as its device the
    CUDA_VISIBLE_DEVICES it was started with, which is what torch would see.
    """

    @staticmethod
    def available_metrics(cfg) -> tuple[str, ...]:
        return ("accuracy", "loss")

    @staticmethod
    def train(cfg, reporters=()) -> TrialResult:
        start = time.time()
        shape = cfg.shape._target_.rsplit(".", 1)[-1]
        if os.environ.get("STAND_IN_RAISE_SHAPE") == shape:
            raise RuntimeError(f"stand-in failure for {shape}")
        gates = Gates.from_env()
        ticket = gates.enter() if gates else 0
        for reporter in reporters:
            device = os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu"
            reporter.on_start(StartEvent({}, (cfg.lr.get("high", 1e-3),), 1, cfg.train.epochs, device))
        if os.environ.get("STAND_IN_MODULES"):
            loaded = sorted(m for m in sys.modules if m.partition(".")[0] == "mlflow")
            Path(os.environ["STAND_IN_MODULES"], f"{os.getpid()}-{time.time_ns()}").write_text(json.dumps(loaded))
        result = TrialResult("finished", None, cfg.train.objective)
        for epoch in range(cfg.train.epochs):
            time.sleep(float(os.environ.get("STAND_IN_EPOCH_SECONDS", "0")))
            if os.environ.get("STAND_IN_DIVERGE_SHAPE") == shape:
                result.status, result.reason = "diverged", f"loss became nan at epoch {epoch}"
                break
            distance = abs(math.log10(cfg.lr.get("high", 1e-3)) - math.log10(3e-3))
            accuracy = (1 - distance / 3) * (epoch + 1) / cfg.train.epochs
            metrics = {"accuracy": accuracy, "loss": 1 - accuracy}
            event = EpochEvent(epoch, epoch, 1 - accuracy, 1 - accuracy, metrics, metrics[cfg.train.objective])
            result.epochs.append(event)
            result.objective = event.objective
            if any([reporter.on_epoch(event) for reporter in reporters]):
                result.status = "pruned"
                break
            if epoch == 0 and gates:
                gates.hold(ticket, reporters)  # mid-trial: its first epoch recorded, more to come
        result.seconds = time.time() - start
        for reporter in reporters:
            reporter.on_end(result)
        return result


class DiskFillingTrainer(StandInTrainer):
    """StandInTrainer that fills the disk holding $FULL_DISK_FILL at a trial's first epoch (once:
    the file stays until the test removes it), as a trial writing data or weights would. It
    fills once the sweep has made its MLflow run (a new sweep's first trials start while it is
    made): the disk fills under a sweep whose stores exist."""

    @staticmethod
    def train(cfg, reporters=()) -> TrialResult:
        path = os.environ.get("FULL_DISK_FILL")
        return StandInTrainer.train(cfg, [_FillAtFirstEpoch(Path(path), cfg), *reporters] if path else reporters)


class _FillAtFirstEpoch(Reporter):
    def __init__(self, path: Path, cfg) -> None:
        self.path = path
        self.cfg = cfg

    def on_epoch(self, event: EpochEvent) -> None:
        if event.epoch == 0 and not self.path.exists():
            _wait_for_the_sweeps_run(self.cfg)
            fill_disk(self.path)


def _wait_for_the_sweeps_run(cfg) -> None:
    """Until the sweep's study records where its MLflow run is (the sweep sets it once made)."""
    import optuna

    from helpers.waiting import wait_until

    study = optuna.load_study(study_name=str(cfg.sweep.name), storage=str(cfg.storage.url))
    wait_until(lambda: "tracking" in study.user_attrs, "the sweep's MLflow run")


def fill_disk(path: Path) -> None:
    """Write `path` until its disk is full."""
    with open(path, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
