"""A recorded study as the readers after a sweep see it: a copy built from checked values.

    study = checked_study(optuna.load_study(study_name=name, storage=storage))

A study may be shared (a database server), so every value in it is untrusted input, as a
recorded config is (sweeper.boundary.recorded_config). The readers (report, verdict, confirm,
ablation, ui) never hold the stored study: they get an in-memory copy that holds only what
was checked here, read once.

- The study: its name and directions (each to minimize or maximize); its user attributes, each
  plain JSON within limits, with the objectives' names and the compare mode checked
  (sweeper.boundary.recorded_sweep). What needs the reader's own settings to be checked (where
  the runs are, the overrides and config folders, the trainer) is checked by the reader, on
  this copy, through recorded_sweep and recorded_study: a reader refuses those in one line.
- Each trial, in order, under its own number: its state; its values, finite numbers; each
  param whose distribution is one Optuna writes (rebuilt from its JSON, choices plain values,
  bounds finite) and whose value fits it; finite intermediate values; its times; its user
  attributes, each plain JSON within limits (those the readers print or join, such as its
  overrides and reason, in the shape a worker records them). System attributes are dropped (no reader uses
  them). What does not check is dropped and named in the trial's `unreadable` attribute; a
  complete trial without readable values is read as failed, its `reason` saying why.

Strings are kept as recorded (an override must build what was recorded), within a length:
wherever one is printed, it is printed escaped (sweeper.boundary.printed).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeper.boundary.printed import printable
from sweeper.boundary.recorded_sweep import _is_name, recorded_compare, recorded_objectives
from sweeper.config import ConfigError

__all__ = ["UNREADABLE_ATTR", "CheckedStudy", "checked_study"]

UNREADABLE_ATTR = "unreadable"  # what a trial recorded that could not be read, and was dropped
MAX_ATTRS = 200  # user attributes of a study or a trial: sweeper writes about a dozen
MAX_NODES = 20_000  # values within one attribute (a list of overrides, a record of lr_find)
MAX_DEPTH = 8
MAX_STRING = 100_000  # characters of one string (an override, a reason)
MAX_STEPS = 100_000  # intermediate values of one trial
MAX_CHOICES = 1_000
MAX_DISTRIBUTION_JSON = 100_000
_DIRECTIONS = (StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE)
# A trial's attributes the readers print or join: kept only in the shape a worker records them.
_TRIAL_ATTRS = {
    "overrides": lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v),
    **{key: lambda v: isinstance(v, str) for key in ("status", "reason", "mlflow_run_id", "strategy", "shape")},
}


class CheckedStudy(optuna.Study):
    """An in-memory study built by checked_study: every value in it was checked."""


class _Unreadable(ValueError):
    pass


def checked_study(raw: optuna.Study) -> CheckedStudy:
    """The checked in-memory copy of `raw` (module doc); `raw` itself when it is one already.
    ConfigError (one line) when the study itself cannot be read: what it recorded cannot be
    fetched, or it has a direction that is neither minimize nor maximize."""
    if isinstance(raw, CheckedStudy):
        return raw
    try:
        directions = list(raw.directions)
        attrs = dict(raw.user_attrs)
        trials = raw.get_trials(deepcopy=False)
    except Exception as error:  # noqa: BLE001 - a tampered storage fails in Optuna's own parsing, in any way
        raise ConfigError(
            f"sweep {printable(raw.study_name)!r}: its study cannot be read ({type(error).__name__}); "
            f"nothing was read or written; give a study that a sweep of yours recorded"
        ) from None
    if not directions or not all(d in _DIRECTIONS for d in directions):
        raise ConfigError(
            f"sweep {printable(raw.study_name)!r}: its study's directions are not minimize or maximize; "
            f"nothing was read or written; give a study that a sweep of yours recorded"
        )
    storage = optuna.storages.InMemoryStorage()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a copy, not a study the user created: nothing to log
    try:
        storage.create_new_study(directions, raw.study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    study = CheckedStudy(study_name=raw.study_name, storage=storage)
    for key, value in _study_attrs(attrs, len(directions)).items():
        study.set_user_attr(key, value)
    study.add_trials([_checked_trial(trial, len(directions)) for trial in sorted(trials, key=lambda t: t.number)])
    return study


def _study_attrs(attrs: Mapping[str, Any], objectives: int) -> dict[str, Any]:
    checked, _ = _checked_attrs(attrs)
    checked["objectives"] = recorded_objectives(checked, objectives)
    compare = recorded_compare(checked)
    checked.pop("compare", None)
    return {**checked, **({"compare": compare} if compare else {})}


def _checked_trial(trial: FrozenTrial, objectives: int) -> FrozenTrial:
    attrs, unreadable = _checked_attrs(trial.user_attrs)
    for key, fits in _TRIAL_ATTRS.items():
        if key in attrs and not fits(attrs[key]):
            del attrs[key]
            unreadable.append(f"attribute {key!r}")
    params: dict[str, Any] = {}
    distributions: dict[str, BaseDistribution] = {}
    for name, value in list(trial.params.items())[:MAX_ATTRS]:
        distribution = _distribution(trial.distributions.get(name))
        if _is_name(name) and distribution is not None and _fits(distribution, value):
            params[name], distributions[name] = value, distribution
        else:
            unreadable.append(f"param {_short(name)}")
    state = trial.state if trial.state in TrialState else TrialState.FAIL
    values = _values(trial.values, objectives)
    if trial.values is not None and values is None:
        unreadable.append("values")
    if state == TrialState.COMPLETE and values is None:
        state = TrialState.FAIL
        attrs["reason"] = "its recorded values are not finite numbers, one per objective"
    if unreadable:
        attrs[UNREADABLE_ATTR] = ", ".join(unreadable)
    start, complete = _time(trial.datetime_start), _time(trial.datetime_complete)
    if state != TrialState.WAITING:
        start = start or complete or datetime.datetime.fromtimestamp(0)
    if state.is_finished():
        complete = complete or start
    return FrozenTrial(
        number=trial.number,
        state=state,
        value=None,
        values=values if state == TrialState.COMPLETE else None,
        datetime_start=start,
        datetime_complete=complete,
        params=params,
        distributions=distributions,
        user_attrs=attrs,
        system_attrs={},
        intermediate_values=_intermediate(trial.intermediate_values),
        trial_id=trial._trial_id,
    )


def _checked_attrs(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The attributes that are plain JSON within limits, and the names of those that are not."""
    checked: dict[str, Any] = {}
    unreadable: list[str] = []
    for key, value in list(attrs.items())[:MAX_ATTRS]:
        try:
            if not _is_name(key):
                raise _Unreadable
            checked[key] = _plain(value, [MAX_NODES], 0)
        except _Unreadable:
            unreadable.append(f"attribute {_short(key)}")
    return checked, unreadable


def _plain(value: Any, budget: list[int], depth: int) -> Any:
    """`value` if it is JSON (no NaN or infinity) within the limits; `budget`: nodes left."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise _Unreadable
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise _Unreadable
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unreadable
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _Unreadable
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, budget, depth + 1) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and len(k) <= MAX_STRING for k in value):
            raise _Unreadable
        return {k: _plain(v, budget, depth + 1) for k, v in value.items()}
    raise _Unreadable


def _distribution(distribution: Any) -> BaseDistribution | None:
    """The distribution rebuilt from its JSON, if it is one Optuna writes, within limits."""
    if not isinstance(distribution, BaseDistribution):
        return None
    try:
        text = distribution_to_json(distribution)
        if len(text) > MAX_DISTRIBUTION_JSON:
            return None
        rebuilt = json_to_distribution(text)
    except Exception:  # noqa: BLE001 - whatever a tampered distribution holds
        return None
    if isinstance(rebuilt, CategoricalDistribution):
        choices = rebuilt.choices
        plain = all(c is None or isinstance(c, (bool, int, str)) or (isinstance(c, float) and math.isfinite(c)) for c in choices)
        short = all(not isinstance(c, str) or len(c) <= 1_000 for c in choices)
        return rebuilt if len(choices) <= MAX_CHOICES and plain and short else None
    if isinstance(rebuilt, (FloatDistribution, IntDistribution)):
        return rebuilt if math.isfinite(rebuilt.low) and math.isfinite(rebuilt.high) else None
    return None


def _fits(distribution: BaseDistribution, value: Any) -> bool:
    try:
        internal = distribution.to_internal_repr(value)
        return math.isfinite(internal) and distribution._contains(internal)
    except Exception:  # noqa: BLE001 - a value of any type: not one the distribution holds
        return False


def _values(values: Any, objectives: int) -> list[float] | None:
    if not isinstance(values, (list, tuple)) or len(values) != objectives:
        return None
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return [float(v) for v in numbers] if len(numbers) == objectives else None


def _intermediate(values: Any) -> dict[int, float]:
    if not isinstance(values, Mapping):
        return {}
    return {
        step: float(value)
        for step, value in list(values.items())[:MAX_STEPS]
        if isinstance(step, int) and 0 <= step < 2**31 and isinstance(value, (int, float)) and math.isfinite(value)
    }


def _time(value: Any) -> datetime.datetime | None:
    return value if isinstance(value, datetime.datetime) else None


def _short(name: Any) -> str:
    return printable(repr(name))[:100]
