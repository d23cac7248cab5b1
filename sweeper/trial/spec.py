"""The trial boundary: what a trainer is given (a trial spec) and what it offers (a protocol).

A trial spec is the trial's resolved config nodes (`TRIAL_NODES`: model, data, task, lr, shape,
optimizer, train) and nothing of the sweep's storage, tracking or search: what a trainer may read.
Every trainer offers `train(cfg, reporters)` and `available_metrics(cfg)` (`Trainer`); one that
can train several trials of one architecture at once offers `train_many` too, with
`why_not_fused` to say which trials cannot share a batch (`FusingTrainer`). The worker uses
`train_many` when `sweep.fuse > 1`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from omegaconf import DictConfig, OmegaConf

from sweeper.trial.events import Reporter, TrialResult

__all__ = ["TRIAL_NODES", "FusingTrainer", "Trainer", "trial_spec"]

# The config nodes a trial is trained from, whole: all a trainer may read, all a run records as
# the trial's params, and the trial's part of a sweep's definition.
TRIAL_NODES = ("model", "data", "task", "lr", "shape", "optimizer", "train")


def trial_spec(cfg: DictConfig | Mapping) -> DictConfig:
    """The trial's own nodes of a composed config, resolved (interpolations into the rest, such
    as results_dir, are filled in first)."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    return OmegaConf.create({key: OmegaConf.to_container(cfg[key], resolve=True) for key in TRIAL_NODES if key in cfg})


@runtime_checkable
class Trainer(Protocol):
    """What `sweep.trainer` names: one trial at a time."""

    def train(self, cfg: DictConfig, reporters: Sequence[Reporter] = ()) -> TrialResult: ...

    def available_metrics(self, cfg: DictConfig) -> Sequence[str]: ...


@runtime_checkable
class FusingTrainer(Trainer, Protocol):
    """A trainer that also trains several trials at once (`sweep.fuse > 1`)."""

    def train_many(self, cfgs: Sequence[DictConfig], reporters: Sequence[Sequence[Reporter]]) -> list[TrialResult]: ...

    def why_not_fused(self, cfgs: Sequence[DictConfig]) -> str | None: ...
