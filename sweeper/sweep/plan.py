"""A sweep read and checked from its command line before anything is created (`plan_sweep`): the
search space, objectives, storage, trial budget and the trainer's own checks."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from omegaconf import DictConfig

from sweeper.config import ConfigError, check_results_dir, compose_config
from sweeper.config.rules import check_required, check_sweep_name
from sweeper.sweep.arms import Arms, arms_of
from sweeper.sweep.identity import (
    definition_of,
)
from sweeper.sweep.objectives import Objectives, check_objectives, objectives_of
from sweeper.sweep.sampling import make_pruner, make_sampler
from sweeper.sweep.space import SearchSpace, build_space, split_overrides, validate_space
from sweeper.sweep.storage import StorageSpec, storage_of
from sweeper.sweep.trainer import check_trial, load_trainer
from sweeper.trial.spec import TRIAL_NODES


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """A validated sweep: everything a worker needs, derived from overrides alone."""

    cfg: DictConfig
    command_line: tuple[str, ...]  # the overrides as given (workers start from these)
    overrides: tuple[str, ...]  # the base config's overrides (sweep overrides taken out)
    config_dirs: tuple[str, ...]
    space: SearchSpace
    objectives: Objectives
    storage: StorageSpec
    name: str
    n_trials: int
    timeout: float | None
    max_failures: int  # failed trials after which workers start no more
    definition: dict[str, str]  # what the sweep is (sweeper.sweep.identity), compared on resume
    allow_changes: bool  # continue a sweep of this name under another definition
    fuse: int = 1  # trials a worker trains at once as one fused model (1: one at a time)
    arms: Arms | None = None  # compare mode: the compared values, each its own sampler and share


def plan_sweep(
    overrides: Iterable[str] = (),
    config_dirs: Iterable[str | os.PathLike] = (),
    *,
    validate: bool = True,
) -> SweepPlan:
    """Read and check a sweep from its command line; nothing is created.

    `validate=False` skips composing the edges of the space and asking the trainer for its
    metrics (a worker joining a sweep that `sweeper sweep` has already checked).
    """
    command_line = tuple(overrides)
    base, sweeps = split_overrides(command_line)
    config_dirs = tuple(str(d) for d in config_dirs)
    cfg = compose_config(base, config_dirs)
    check_results_dir(cfg.results_dir)  # before any check that may write there (a cached body)
    name = check_sweep_name(str(cfg.sweep.name))
    check_required(cfg, TRIAL_NODES)  # before the definition reads them through interpolations
    allow_changes = cfg.sweep.get("allow_changes", False)
    space = build_space(cfg, sweeps)
    objectives = objectives_of(cfg)
    storage = storage_of(cfg)
    n_trials, timeout = cfg.sweep.n_trials, cfg.sweep.timeout
    max_failures = cfg.sweep.get("max_failures")
    if max_failures is None:
        max_failures = n_trials
    fuse = cfg.sweep.get("fuse", 1)
    arms = arms_of(cfg.sweep.get("compare", "none"), space, objectives.several, str(cfg.sampler.get("_target_", "")))
    space_lines = [*space.describe(), *([arms.describe()] if arms else [])]
    definition = definition_of(cfg, space_lines, space.fixed, dict(zip(objectives.names, objectives.directions)))
    plan = SweepPlan(
        cfg=cfg, command_line=command_line, overrides=tuple(base), config_dirs=config_dirs, space=space,
        objectives=objectives, storage=storage, name=name, n_trials=n_trials, timeout=timeout,
        max_failures=max_failures, definition=definition, allow_changes=allow_changes, fuse=fuse, arms=arms,
    )  # fmt: skip
    if validate:
        quick_checks(plan)
        validate_plan(plan)
    return plan


def quick_checks(plan: SweepPlan) -> None:
    """The checks that take milliseconds (the sampler's and the pruner's settings): they come
    before anything slow, so a typo fails at once."""
    make_sampler(plan.cfg, plan.space, arms=plan.arms)
    make_pruner(plan.cfg, plan.arms)


def validate_plan(plan: SweepPlan) -> None:
    """The checks that take seconds: the trainer's metrics, a trial composed at every edge of the
    space, a database server reached, and one trial built with the trainer's own checks.
    `sweeper sweep` runs them while its workers start (the trainer's in one of them)."""
    check_space(plan)
    check_trainer(plan)


def check_space(plan: SweepPlan) -> None:
    """A trial composed at every edge of the space, and a database server reached: no torch."""
    validate_space(plan.space, plan.overrides, plan.config_dirs)
    if plan.storage.path is None:  # a database server: reachable now, before anything is recorded
        plan.storage.open()


def check_trainer(plan: SweepPlan) -> None:
    """What the trainer says of the sweep: its metrics, and one trial built with its own checks
    (the trainer loaded: torch, for sweeper's own)."""
    cfg, objectives = plan.cfg, plan.objectives
    trainer = load_trainer(cfg)
    if plan.fuse > 1 and not callable(getattr(trainer, "train_many", None)):
        raise ConfigError(
            f"sweep.fuse: {plan.fuse}, but sweep.trainer {cfg.sweep.trainer!r} has no train_many(cfgs, reporters) "
            f"to train trials together; set sweep.fuse=1."
        )
    setting = "sweep.objectives" if objectives.several else "train.objective"
    check_objectives(objectives, tuple(trainer.available_metrics(cfg)), setting)
    check_trial(trainer, plan.space, plan.overrides, plan.config_dirs)
