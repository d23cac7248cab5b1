"""Trials that only sleep, for timing a sweep tool end to end: the tool's own costs are all that
is left. Every run of the benchmark does the same work: the seconds are drawn once (seeded) into
a work folder, and the k-th trial to start, in whatever process, sleeps the k-th of them.

- `sweeper sweep ... sweep.trainer=sleep_trials.SleepTrainer` (scripts/ on PYTHONPATH): a trainer
  that sleeps its drawn seconds over `train.epochs` epochs and reports each epoch, as a trainer
  does (so MLflow records and Optuna's pruning report happen as usual);
- the hydra-optuna-sweeper baseline's task function calls `sleep_trial()` with the same folder.

Each trial appends one JSON line to <work>/trials.jsonl: its index, seconds, pid, and when its
sleep began and ended (time.time()). The folder comes from the BENCH_E2E_WORK variable, which
the processes of a sweep inherit. Standard library only: the baseline's virtual environment has
neither sweeper nor torch.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

WORK = "BENCH_E2E_WORK"
SLEEPS, COUNTER, TRIALS = "sleeps.json", "counter", "trials.jsonl"


def draw_sleeps(n: int, low: float, high: float, seed: int) -> list[float]:
    """n seconds drawn uniformly from [low, high], the same for the same seed."""
    draw = random.Random(seed)
    return [round(draw.uniform(low, high), 3) for _ in range(n)]


def prepare_work(folder: Path, sleeps: Sequence[float]) -> Path:
    """A fresh work folder for one timed run: the seconds to hand out, nothing handed out yet."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SLEEPS).write_text(json.dumps(list(sleeps)))
    (folder / COUNTER).write_text("0")
    (folder / TRIALS).write_text("")
    return folder


def read_trials(folder: Path) -> list[dict[str, Any]]:
    """The trials that ran, in the order they took their seconds."""
    lines = (folder / TRIALS).read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda trial: trial["index"])


def _locked(path: Path, change: Callable[[str], str]) -> str:
    """Read-modify-write `path` under an exclusive flock: the old text."""
    with open(path, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        old = handle.read()
        handle.seek(0)
        handle.write(change(old))
        handle.truncate()
        return old


def _claim(folder: Path) -> tuple[int, float]:
    index = int(_locked(folder / COUNTER, lambda old: str(int(old) + 1)))
    sleeps = json.loads((folder / SLEEPS).read_text())
    if index >= len(sleeps):
        raise RuntimeError(f"trial {index + 1} started, but only {len(sleeps)} were drawn: the tool ran more trials than asked")
    return index, sleeps[index]


def sleep_trial(epochs: int = 1, on_epoch: Callable[[int], Any] | None = None, folder: Path | None = None) -> float:
    """Take the next drawn seconds and sleep them in `epochs` equal parts, calling `on_epoch`
    after each part; note the trial in trials.jsonl; return the seconds slept."""
    folder = folder or Path(os.environ[WORK])
    index, seconds = _claim(folder)
    started = time.time()
    for epoch in range(epochs):
        time.sleep(seconds / epochs)
        if on_epoch is not None:
            on_epoch(epoch)
    ended = time.time()
    line = json.dumps({"index": index, "seconds": seconds, "pid": os.getpid(), "started": started, "ended": ended})
    with open(folder / TRIALS, "a") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(line + "\n")
    return seconds


def objective(lr: float) -> float:
    """A made-up accuracy in [0, 1], best at lr 3e-3: something for the sampler to compare."""
    return max(0.0, 1 - abs(math.log10(lr) - math.log10(3e-3)) / 10)


class SleepTrainer:
    """sweep.trainer=sleep_trials.SleepTrainer: train(cfg, reporters) sleeps the trial's drawn
    seconds over cfg.train.epochs epochs, reporting each epoch (objective from the lr)."""

    @staticmethod
    def available_metrics(cfg: Any) -> tuple[str, ...]:
        return ("accuracy", "loss")

    @staticmethod
    def train(cfg: Any, reporters: Sequence[Any] = ()) -> Any:
        from omegaconf import OmegaConf

        from sweeper.trial.events import EpochEvent, StartEvent, TrialResult

        lr = float(cfg.lr.get("high") or 1e-3)
        epochs = int(cfg.train.epochs)
        result = TrialResult("finished", None, str(cfg.train.objective))
        start = StartEvent(OmegaConf.to_container(cfg, resolve=True), (lr,), 1, epochs, "cpu")
        for reporter in reporters:
            reporter.on_start(start)

        def report(epoch: int) -> None:
            accuracy = objective(lr) * (epoch + 1) / epochs
            metrics = {"accuracy": accuracy, "loss": 1 - accuracy}
            event = EpochEvent(epoch, epoch + 1, 1 - accuracy, 1 - accuracy, metrics, metrics[result.objective_name])
            result.epochs.append(event)
            result.objective = event.objective
            for reporter in reporters:
                reporter.on_epoch(event)  # pruning asked for is ignored: every trial sleeps its full seconds

        result.seconds = sleep_trial(epochs, report)
        for reporter in reporters:
            reporter.on_end(result)
        return result
