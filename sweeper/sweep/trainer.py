"""The trainer `sweep.trainer` names, loaded and checked on one trial before a sweep starts."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import optuna
from omegaconf import DictConfig

from sweeper.config import ConfigError, compose_config
from sweeper.sweep.space import SearchSpace


def load_trainer(cfg: DictConfig) -> Any:
    """What `sweep.trainer` names: a module (or an object in one) with train(cfg, reporters) and
    available_metrics(cfg); optionally prepare(cfg) and resolve_device(name), the checks
    `check_trial` runs before a sweep starts."""
    name = cfg.sweep.trainer
    try:
        trainer = _import(name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"sweep.trainer: cannot import {name!r} ({error}); name a module with "
            f"train(cfg, reporters) and available_metrics(cfg), e.g. sweeper.training.engine."
        ) from None
    missing = [f for f in ("train", "available_metrics") if not callable(getattr(trainer, f, None))]
    if missing:
        raise ConfigError(f"sweep.trainer: {name!r} has no {' or '.join(missing)}; it needs both.")
    return trainer


def _import(name: str) -> Any:
    """A module by its dotted name, or else an attribute of its parent module."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as missing:
        parent, _, attribute = name.rpartition(".")
        if not parent or missing.name != name:
            raise
        found = getattr(importlib.import_module(parent), attribute, None)
        if found is None:
            raise missing from None
        return found


def check_trial(trainer: Any, space: SearchSpace, base: Sequence[str], config_dirs: Sequence[str]) -> None:
    """Build one trial of the sweep with the trainer's own checks, where it offers them
    (`prepare(cfg)`, and `resolve_device(name)`): a setting that would fail every trial (data
    that is not there, layer groups that do not cover the model, a list of lrs of the wrong
    length, CUDA where there is none) stops the sweep before its study exists, instead of
    failing trial after trial. It builds on the CPU, so this process holds no GPU memory."""
    prepare = getattr(trainer, "prepare", None)
    if not callable(prepare):
        return
    first = optuna.trial.FixedTrial({d.name: d.edges()[0] for d in space.dimensions()})
    cfg = compose_config([*base, *space.suggest(first)], config_dirs)
    resolve_device = getattr(trainer, "resolve_device", None)
    if callable(resolve_device):
        resolve_device(str(cfg.train.device))
    cfg.train.device = "cpu"
    prepare(cfg)
