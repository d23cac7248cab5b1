"""The configured sampler and pruner (`sampler=`, `pruner=`), and the reporter that asks the pruner
after every epoch."""

from __future__ import annotations

import functools
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sweeper.config import ConfigError, check_arguments
from sweeper.sweep.arms import ArmPruner, Arms, ArmSampler
from sweeper.sweep.optuna_quiet import experimental_features_on_purpose
from sweeper.sweep.space import SearchSpace
from sweeper.trial.events import EpochEvent, Reporter

ARM_SEED_STRIDE = 1000  # arm a's sampler draws with seed + 1000 a (+ the worker's index)


def make_sampler(cfg: DictConfig, space: SearchSpace, worker: int = 0, arms: Arms | None = None) -> optuna.samplers.BaseSampler:
    """The configured sampler; worker k draws with seed + k so parallel workers differ. In compare
    mode (`arms`) each arm gets its own, seeded apart (sweeper.sweep.arms)."""
    if arms is not None:
        return ArmSampler(arms, lambda index: make_sampler(cfg, space, worker + ARM_SEED_STRIDE * index))
    node = OmegaConf.to_container(cfg.sampler, resolve=True)
    if node.get("seed") is not None:
        node["seed"] = int(node["seed"]) + worker
    sampler = _instantiate("sampler", node)
    if isinstance(sampler, functools.partial):  # the grid sampler, completed with the space's grid
        sampler = sampler(search_space=space.grid())
    return sampler


def make_pruner(cfg: DictConfig, arms: Arms | None = None) -> optuna.pruners.BasePruner:
    """The configured pruner; in compare mode it compares a trial with its own arm's alone, and
    waits for fewer complete trials where an arm's share is small (Arms.startup_trials)."""
    node = OmegaConf.to_container(cfg.pruner, resolve=True)
    startup = arms.capped_startup(node, int(cfg.sweep.n_trials)) if arms is not None else None
    if startup is not None:
        node["n_startup_trials"] = startup
    pruner = _instantiate("pruner", node)
    if arms is None or isinstance(pruner, optuna.pruners.NopPruner):
        return pruner
    return ArmPruner(pruner, arms.param)


def _instantiate(group: str, node: dict) -> Any:
    check_arguments(node, group)
    try:
        with experimental_features_on_purpose():
            return instantiate(node)
    except Exception as error:  # noqa: BLE001 - Hydra wraps the real cause; show it in one line
        cause = " ".join(str(error.__cause__ or error).split())
        raise ConfigError(
            f"{group}: cannot build {node.get('_target_')}: {cause}; pick a ready-made one with "
            f"{group}=<name> (conf/{group}/), or fix {group}._target_ and its settings."
        ) from None


class PruningReporter(Reporter):
    """Reports the objective to Optuna after every epoch; True (stop) when the pruner says so.

    The step is the number of epochs trained, so pruner settings read in epochs.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        # pruner=none never prunes: do not ask it (a storage round trip every epoch).
        self.may_prune = not isinstance(trial.study.pruner, optuna.pruners.NopPruner)

    def on_epoch(self, event: EpochEvent) -> bool:
        self.trial.report(event.objective, event.epoch + 1)
        return self.may_prune and bool(self.trial.should_prune())  # pruners may answer with a numpy bool
