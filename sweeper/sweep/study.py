"""The sweep's Optuna study: created (or resumed) by `sweeper sweep`, joined by workers, and
checked against the plan it was started with.

Resume: a study of the same name in the same storage is continued; a study recorded with another
definition is refused unless `sweep.allow_changes`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import optuna

from sweeper.boundary.recorded_sweep import recorded_changes, recorded_definition, recorded_objective_names
from sweeper.config import ConfigError
from sweeper.records.environment import git_state
from sweeper.secrets import mask_text
from sweeper.sweep.arms import COMPARE_ATTR
from sweeper.sweep.identity import (
    CHANGES_ATTR,
    DEFINITION_ATTR,
    change_record,
    describe_differences,
    differences,
)
from sweeper.sweep.optuna_quiet import experimental_features_on_purpose, quiet_optuna
from sweeper.sweep.plan import SweepPlan
from sweeper.sweep.sampling import make_pruner, make_sampler


def open_study(plan: SweepPlan, *, create: bool, worker: int = 0) -> optuna.Study:
    """The sweep's study: created (or resumed) by `sweeper sweep`, joined by workers."""
    storage = plan.storage.open()
    sampler, pruner = make_sampler(plan.cfg, plan.space, worker, plan.arms), make_pruner(plan.cfg, plan.arms)
    if not create:
        try:
            study = optuna.load_study(study_name=plan.name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise ConfigError(
                f"sweep.name: no sweep {plan.name!r} in {plan.storage.label()}; start it with "
                f"`sweeper sweep` (same overrides), then join it."
            ) from None
        check_definition(study, plan)  # a worker with other overrides must not join
        return study
    with plan.storage.claim(plan.name), quiet_optuna():
        study = optuna.create_study(
            study_name=plan.name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=list(plan.objectives.directions),
            load_if_exists=True,
        )
        if study.trials or DEFINITION_ATTR in study.user_attrs:
            check_definition(study, plan, record=True)
        else:
            _start(study, plan)
    return study


def existing_study(plan: SweepPlan) -> optuna.Study | None:
    """The sweep's study if its storage already holds one of this name; creates nothing (an
    embedded storage that does not exist yet is not made)."""
    if plan.storage.path is not None and not plan.storage.path.exists():
        return None
    if plan.storage.kind == "sqlite" and _named_in_sqlite(plan.storage.path, plan.name) is False:
        return None
    try:
        return optuna.load_study(study_name=plan.name, storage=plan.storage.open())
    except KeyError:
        return None


def _named_in_sqlite(path: Path, name: str) -> bool | None:
    """Whether the SQLite file at `path` holds a study named `name`, read without Optuna, whose
    storage (its imports, its schema's checks: ~0.35 s of a core) a new sweep's warm server
    would wait for; None when the file cannot say (not Optuna's tables, locked, damaged), and
    Optuna reads it. Read-only: nothing is written to the file."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            return db.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchone() is not None
    except sqlite3.Error:
        return None


def check_definition(study: optuna.Study, plan: SweepPlan, *, record: bool = False) -> None:
    """Refuse to go on with a study whose recorded definition differs from the plan's, unless
    sweep.allow_changes; `record` keeps an allowed change (and a definition the study lacked)."""
    _check_resumable(study, plan)
    recorded = recorded_definition(study.user_attrs)  # a shared study's record: checked, or refused in one line
    if recorded is None:  # a study from before definitions were recorded: it has one from now on
        if record:
            study.set_user_attr(DEFINITION_ATTR, plan.definition)
        return
    found = differences(recorded, plan.definition)
    if not found:
        return
    if not plan.allow_changes:
        raise ConfigError(
            f"sweep.name: a sweep named {plan.name!r} already exists in {plan.storage.label()} with another "
            f"definition ({describe_differences(found)}); nothing was changed. Give this sweep its own name "
            f"(sweep.name={_free_name(study, plan)}), or continue the existing one with these settings anyway "
            f"(sweep.allow_changes=true: the study records the change)."
        )
    if record:
        changes = [*recorded_changes(study.user_attrs), change_record(found, git_state().code_version)]
        study.set_user_attr(CHANGES_ATTR, changes)
        study.set_user_attr(DEFINITION_ATTR, plan.definition)


def _free_name(study: optuna.Study, plan: SweepPlan) -> str:
    """A name no sweep in the storage has yet: the plan's, numbered."""
    taken = {s.study_name for s in optuna.get_all_study_summaries(study._storage, include_best_trial=False)}
    number = 2
    while f"{plan.name}-{number}" in taken:
        number += 1
    return f"{plan.name}-{number}"


def _check_resumable(study: optuna.Study, plan: SweepPlan) -> None:
    directions = tuple(d.name.lower() for d in study.directions)
    names = recorded_objective_names(study.user_attrs) or plan.objectives.names
    if directions != plan.objectives.directions or names != plan.objectives.names:
        raise ConfigError(
            f"sweep.name: the sweep {plan.name!r} in {plan.storage.label()} optimises "
            f"{dict(zip(names, directions))}, not {dict(zip(plan.objectives.names, plan.objectives.directions))}; "
            f"give this one another name (sweep.name=...)."
        )


def _start(study: optuna.Study, plan: SweepPlan) -> None:
    """A new study: record what it is, and queue the covering trials."""
    study.set_user_attr("objectives", list(plan.objectives.names))
    with experimental_features_on_purpose():
        study.set_metric_names(list(plan.objectives.names))  # Optuna's plots and dashboard name them
    study.set_user_attr("overrides", [mask_text(o) for o in plan.overrides])
    study.set_user_attr("config_dirs", list(plan.config_dirs))
    study.set_user_attr("space", plan.space.describe())
    study.set_user_attr(DEFINITION_ATTR, plan.definition)
    study.set_user_attr("code_version", git_state().code_version)  # information: not part of the definition
    if plan.arms is not None:  # the arms cover the compared values, an equal share each
        study.set_user_attr(COMPARE_ATTR, plan.arms.record())
    elif plan.cfg.sweep.cover:
        for params in plan.space.cover()[: plan.n_trials]:
            study.enqueue_trial(params, skip_if_exists=True)
