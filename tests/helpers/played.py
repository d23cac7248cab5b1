"""Trials played into reporters without training, and hooks into a real trainer's steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sweeper.trial.events import EpochEvent, StartEvent, TrialResult


def feed_trial(
    reporters, config: dict, *, groups: int = 3, epochs: int = 2, batches: int = 5, status: str = "finished", seed: int = 0
) -> TrialResult:
    """Play one trial's events into a reporter (or several, in order, as the trainer calls them)
    without training: deterministic step and epoch values (distinct per seed), so a test can
    check every recorded number."""
    from sweeper.trial.events import Reporter, StepEvent

    reporters = [reporters] if isinstance(reporters, Reporter) else list(reporters)
    peaks = tuple(1e-3 / 10 ** (groups - 1 - g) for g in range(groups))
    for reporter in reporters:
        reporter.on_start(StartEvent(config, peaks, groups, epochs * batches, "cpu"))
    result = TrialResult(status, None, "accuracy", device="cpu", seconds=1.5)
    for epoch in range(epochs):
        for batch in range(batches):
            step = epoch * batches + batch
            scale = (1 + math.cos(math.pi * step / (epochs * batches))) / 2
            event = StepEvent(step, epoch, "train", tuple(p * scale for p in peaks), 0.85 + 0.1 * scale, 2.0 / (step + 1) + seed)
            result.steps.append(event)
            for reporter in reporters:
                reporter.on_step(event)
        accuracy = 0.5 + 0.1 * epoch + 0.01 * seed
        metrics = {"accuracy": accuracy, "loss": 1.1 / (epoch + 1)}
        event = EpochEvent(epoch, (epoch + 1) * batches, 1.0 / (epoch + 1), metrics["loss"], metrics, accuracy)
        result.epochs.append(event)
        result.objective = accuracy
        for reporter in reporters:
            reporter.on_epoch(event)
    for reporter in reporters:
        reporter.on_end(result)
    return result


@contextmanager
def before_each_optimizer_step(record: Callable) -> Iterator[None]:
    """Call `record(optimizer)` just before every optimizer step taken inside the block."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: record(optimizer))
    try:
        yield
    finally:
        handle.remove()
