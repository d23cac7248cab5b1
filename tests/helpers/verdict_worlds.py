"""A stand-in trainer whose objective is a known function of the slice strategy, the head lr and
the seed (tests/test_verdict.py): worlds in which the verdict's answer is known beforehand.
VERDICT_WORLD picks one:

- tolerance: the score rises with the head lr for every strategy alike, but `single` collapses
  above 3e-3 (the lr it tolerates); the arms differ only through that;
- slice: geometric scores 0.1 above the others at every lr (the slice itself matters);
- close: geometric is 0.002 above, under noise of 0.02 a run (too close to tell with few seeds).

Every run adds the seed's own luck (shared by all runs of that seed: common random numbers) and
a little noise of its own, both fixed by (seed, strategy), so reruns agree."""

from __future__ import annotations

import math
import os
import random
import zlib

from sweeper.trial.events import EpochEvent, TrialResult

NOISE = {"tolerance": (0.01, 0.001), "slice": (0.01, 0.001), "close": (0.01, 0.02)}  # (shared, own) sd


def score(world: str, strategy: str, lr: float) -> float:
    if world == "tolerance":
        return 0.3 if strategy == "single" and lr > 3e-3 else 0.80 + 0.05 * math.log10(lr / 3e-4)
    if world == "slice":
        return 0.80 - 0.05 * abs(math.log10(lr / 3e-3)) + (0.1 if strategy == "geometric" else 0.0)
    return 0.80 + (0.002 if strategy == "geometric" else 0.0)


def _draw(*key: object) -> float:
    return random.Random(zlib.crc32(repr(key).encode())).gauss(0, 1)


class World:
    """The trainer (sweep.trainer=helpers.verdict_worlds.World): a dotted name, as a recorded config's
    code must be to be allowed (--allow-module helpers)."""

    @staticmethod
    def available_metrics(cfg) -> tuple[str, ...]:
        return ("accuracy",)

    @staticmethod
    def train(cfg, reporters=()) -> TrialResult:
        world = os.environ["VERDICT_WORLD"]
        strategy, lr, seed = str(cfg.lr.strategy), float(cfg.lr.high), int(cfg.train.seed)
        shared, own = NOISE[world]
        value = score(world, strategy, lr) + shared * _draw(world, seed) + own * _draw(world, seed, strategy)
        result = TrialResult("finished", None, "accuracy")
        for epoch in range(cfg.train.epochs):
            accuracy = value * (epoch + 1) / cfg.train.epochs
            event = EpochEvent(epoch, epoch, 1 - accuracy, 1 - accuracy, {"accuracy": accuracy}, accuracy)
            result.epochs.append(event)
            result.objective = accuracy
            if any([reporter.on_epoch(event) for reporter in reporters]):
                result.status = "pruned"
                break
        return result
