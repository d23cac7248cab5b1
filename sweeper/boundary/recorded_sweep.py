"""What a study recorded about its sweep (not a trial's config), as the readers after a sweep use
it: where its MLflow runs are, its objectives' names, what its compare mode compared.

    tracking = recorded_tracking(study.user_attrs, own_label)   # where confirm, report, ui go
    names = recorded_objectives(study.user_attrs, len(study.directions))
    compare = recorded_compare(study.user_attrs)                 # {} or {"param": ..., "arms": [...]}
    definition = recorded_definition(study.user_attrs)          # what a resumed sweep compares itself with

A study may be shared (a database server), so these are untrusted input, as a trial's overrides
are (sweeper.boundary.recorded_study):

- *Where the runs are* decides where the reader writes (confirm's runs, the report's artifacts,
  the UI's server and its saved view). A recorded store is followed only when it is the user's
  own tracking store, or an SQLite store that exists on this machine (the sweep's, read from
  another folder): never a server the user did not name (a study could send the user's runs,
  configs and environment to a server of the recorder's choosing) and never a path where no
  store is (MLflow would make one there). Anything else is one line, before anything is read
  or written.
- *Names* (objectives, the compared setting and its arms) are printed and become columns,
  MLflow keys and file contents: each is a short name of the characters sweeper's own names use;
  a record that holds anything else is read as if it had none (a report says what it cannot
  read and goes on).
- *What a resumed sweep compares itself with* (its definition, the changes continued with
  sweep.allow_changes, its objectives' names, lr_find's ranges): a record that is not what
  sweeper writes is refused in one line naming the attribute, before anything is changed:
  resuming on a guess would mix two sweeps in one study.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeper.boundary.printed import printable
from sweeper.config import ConfigError

__all__ = [
    "ANCHOR_ATTR",
    "CHANGES_ATTR",
    "COMPARED_SETTINGS",
    "DEFINITION_ATTR",
    "UNKNOWN",
    "recorded_anchor",
    "recorded_changes",
    "recorded_compare",
    "recorded_definition",
    "recorded_objective_names",
    "recorded_objectives",
    "recorded_run_location",
    "recorded_tracking",
]

ANCHOR_ATTR = "lr_anchor"  # what lr_find found when the sweep began (sweeper.sweep.lr_anchor writes it)
DEFINITION_ATTR = "definition"  # the sweep's definition, flat {setting: JSON text} (sweeper.sweep.identity)
CHANGES_ATTR = "definition_changes"  # the changes a sweep was continued with (sweep.allow_changes)
MAX_SETTINGS = 10_000  # of a definition: sweeper's hold a few hundred
MAX_TEXT = 100_000  # characters of a setting's name or JSON value
UNKNOWN = "unknown"  # a study from before sweeps recorded where their runs are
COMPARED_SETTINGS = ("strategy", "shape")  # what a compare mode compares (sweeper.sweep.arms)
MAX_LOCATION = 4096  # characters of a recorded URL or name
_NAME = re.compile(r"[A-Za-z0-9_][\w.\-/]{0,99}")  # a metric, an arm: accuracy, valid_loss, fastai_one_cycle
_RUN_ID = re.compile(r"[0-9a-f]{0,64}")
_ID = re.compile(r"[A-Za-z0-9_-]{0,64}")  # an MLflow experiment's id


def recorded_tracking(attrs: Mapping[str, Any], own_label: str | None) -> dict[str, str] | str | None:
    """Where the sweep recorded its MLflow runs, checked: None (tracking was off), UNKNOWN (not
    recorded), or {uri, experiment, experiment_id, parent_run_id} of the user's own store
    (`own_label`, the URL as sweeper records it) or of an SQLite store that exists here."""
    recorded = attrs.get("tracking", UNKNOWN)
    if recorded is None or recorded == UNKNOWN:
        return recorded
    keys = ("uri", "experiment", "experiment_id", "parent_run_id")
    if (
        not isinstance(recorded, Mapping)
        or not all(isinstance(recorded.get(key, ""), str) and len(recorded.get(key, "")) <= MAX_LOCATION for key in keys)
        or not recorded.get("uri")
        or not recorded.get("experiment")
        or not _RUN_ID.fullmatch(recorded.get("parent_run_id", ""))
    ):
        raise ConfigError(f"the study's recorded tracking: not a location sweeper records; {_NOTHING}")
    uri = recorded["uri"]
    if uri != own_label and not _existing_sqlite(uri):
        raise ConfigError(
            f"tracking.uri: the study records its MLflow runs in {printable(uri)}, which is not your tracking "
            f"store ({printable(own_label or 'tracking off')}) nor one that exists here; nothing was read or written "
            f"there. If that store is yours, name it yourself (tracking.uri=URL, or tracking=server with "
            f"MLFLOW_TRACKING_URI exported, password included) and run the same command again."
        )
    return {key: str(recorded.get(key, "")) for key in keys}


def recorded_objectives(attrs: Mapping[str, Any], count: int) -> list[str]:
    """The names of the sweep's `count` objectives as it recorded them; "value" ("value_0",
    ...) where the record holds none, or names sweeper would not have written."""
    names = attrs.get("objectives")
    if isinstance(names, list) and len(names) == count and all(_is_name(n) for n in names) and len(set(names)) == count:
        return list(names)
    return ["value"] if count == 1 else [f"value_{i}" for i in range(count)]


def recorded_compare(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's compare mode: {"param": the compared setting, "arms": its values}, or {} for
    a sweep that compared nothing, or whose record is not one a sweep writes."""
    recorded = attrs.get("compare")
    if not isinstance(recorded, Mapping) or recorded.get("param") not in COMPARED_SETTINGS:
        return {}
    arms = recorded.get("arms") or []
    if not isinstance(arms, list) or len(arms) > 100 or not all(_is_name(a) for a in arms):
        return {}
    return {"param": recorded["param"], "arms": list(arms)}


def recorded_anchor(attrs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """What lr_find found when the sweep began (None when it did not run), checked to be what
    sweeper writes: per strategy (a name), suggestions (names: positive numbers), a range (two
    positive numbers, the lower first, or None with a reason), and its seconds; else ConfigError."""
    record = attrs.get(ANCHOR_ATTR)
    if record is None:
        return None
    strategies = record.get("strategies") if isinstance(record, Mapping) else None
    if not isinstance(strategies, Mapping) or not _is_number(record.get("seconds")):
        raise ConfigError(_not_resumable(ANCHOR_ATTR, "what lr_find found"))
    for strategy, found in strategies.items():
        suggestions = found.get("suggestions") if isinstance(found, Mapping) else None
        span = found.get("range", "missing") if isinstance(found, Mapping) else "missing"
        if (
            not _is_name(strategy)
            or not isinstance(suggestions, Mapping)
            or not all(_is_name(k) and _is_number(v) for k, v in suggestions.items())
            or not (span is None or _is_range(span))
        ):
            raise ConfigError(_not_resumable(ANCHOR_ATTR, "what lr_find found"))
    return record


def recorded_definition(attrs: Mapping[str, Any]) -> dict[str, str] | None:
    """The sweep's recorded definition: {setting: its value as JSON text}, within limits; None
    for a study from before definitions were recorded; else ConfigError."""
    record = attrs.get(DEFINITION_ATTR)
    if record is None:
        return None
    if not (
        isinstance(record, Mapping)
        and len(record) <= MAX_SETTINGS
        and all(isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_TEXT and len(v) <= MAX_TEXT for k, v in record.items())
    ):
        raise ConfigError(_not_resumable(DEFINITION_ATTR, "the sweep's settings, each valued in JSON text"))
    return dict(record)


def recorded_changes(attrs: Mapping[str, Any]) -> list[Any]:
    """The changes the sweep was continued with (sweep.allow_changes), a list; else ConfigError."""
    record = attrs.get(CHANGES_ATTR, [])
    if not isinstance(record, list):
        raise ConfigError(_not_resumable(CHANGES_ATTR, "the changes the sweep was continued with"))
    return list(record)


def recorded_objective_names(attrs: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The names of the objectives the sweep optimises (None: not recorded); else ConfigError.
    A reader after the sweep falls back on "value" instead (recorded_objectives): a resumed
    sweep must not guess what it optimises."""
    names = attrs.get("objectives")
    if names is None:
        return None
    if not isinstance(names, list) or not names or not all(_is_name(n) for n in names) or len(set(names)) != len(names):
        raise ConfigError(_not_resumable("objectives", "the names of what the sweep optimises"))
    return tuple(names)


def recorded_run_location(attrs: Mapping[str, Any]) -> dict[str, str]:
    """Where the sweep's own MLflow run is ({experiment_id, parent_run_id}), for a worker that
    records its trial's run under it in its own tracking store (never the record's store);
    {} where the record holds no such place (the worker then finds the run by its tags)."""
    recorded = attrs.get("tracking")
    if not isinstance(recorded, Mapping):
        return {}
    experiment, parent = recorded.get("experiment_id"), recorded.get("parent_run_id")
    if not isinstance(experiment, str) or not isinstance(parent, str) or not (_ID.fullmatch(experiment) and _RUN_ID.fullmatch(parent)):
        return {}
    return {"experiment_id": experiment, "parent_run_id": parent}


def _is_range(span: Any) -> bool:
    return isinstance(span, list) and len(span) == 2 and all(_is_number(v) and v > 0 for v in span) and span[0] < span[1]


def _not_resumable(attribute: str, what: str) -> str:
    return (
        f"sweep.name: the study's recorded {attribute} ({what}) is not one sweeper writes; nothing was "
        f"changed. Give this sweep another name (sweep.name=...) to start it afresh."
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _existing_sqlite(uri: str) -> bool:
    prefix = "sqlite:///"
    return uri.startswith(prefix) and "?" not in uri and Path(uri[len(prefix) :]).is_file()


_NOTHING = "nothing was read or written; give a study that a sweep of yours recorded"
