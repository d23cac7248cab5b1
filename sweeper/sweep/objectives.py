"""What a sweep optimises: `train.objective` / `train.direction`, or several at once from
`sweep.objectives`; each must be a metric the trainer reports (`available_metrics(cfg)`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError
from sweeper.trial.events import TrialResult

DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class Objectives:
    names: tuple[str, ...]
    directions: tuple[str, ...]

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    def values(self, result: TrialResult) -> float | list[float]:
        """The value(s) Optuna is told: the last epoch's metrics."""
        if not self.several:
            return float(result.objective)
        metrics = result.epochs[-1].metrics
        return [float(metrics[name]) for name in self.names]


def objectives_of(cfg: DictConfig) -> Objectives:
    several = cfg.sweep.get("objectives")
    if several is None:
        pairs = [(cfg.train.objective, cfg.train.direction)]
        setting = "train.direction"
    else:
        if not OmegaConf.is_dict(several) or not several:
            raise ConfigError(
                f"sweep.objectives: {several!r} must map metric names to directions, e.g. "
                f"{{accuracy: maximize, loss: minimize}}; null uses train.objective."
            )
        pairs = list(several.items())
        setting = "sweep.objectives"
    for name, direction in pairs:
        if direction not in DIRECTIONS:
            raise ConfigError(f"{setting}: {direction!r} (for {name}) must be one of {list(DIRECTIONS)}.")
    return Objectives(tuple(str(n) for n, _ in pairs), tuple(str(d) for _, d in pairs))


def check_objectives(objectives: Objectives, available: Sequence[str], setting: str) -> None:
    unknown = [n for n in objectives.names if n not in available]
    if unknown:
        raise ConfigError(f"{setting}: {unknown} not reported by the trainer for this config; choose among {list(available)}.")
