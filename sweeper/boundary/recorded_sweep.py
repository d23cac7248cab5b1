"""What a study recorded about its sweep (not a trial's config), as the readers after a sweep use
it: where its MLflow runs are, its objectives' names, what its compare mode compared.

    tracking = recorded_tracking(study.user_attrs, own_label)   # where confirm, report, ui go
    names = recorded_objectives(study.user_attrs, len(study.directions))
    compare = recorded_compare(study.user_attrs)                 # {} or {"param": ..., "arms": [...]}

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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeper.boundary.printed import printable
from sweeper.config import ConfigError

__all__ = ["ANCHOR_ATTR", "COMPARED_SETTINGS", "UNKNOWN", "recorded_anchor", "recorded_compare", "recorded_objectives", "recorded_tracking"]

ANCHOR_ATTR = "lr_anchor"  # what lr_find found when the sweep began (sweeper.sweep.lr_anchor writes it)
UNKNOWN = "unknown"  # a study from before sweeps recorded where their runs are
COMPARED_SETTINGS = ("strategy", "shape")  # what a compare mode compares (sweeper.sweep.arms)
MAX_LOCATION = 4096  # characters of a recorded URL or name
_NAME = re.compile(r"[A-Za-z0-9_][\w.\-/]{0,99}")  # a metric, an arm: accuracy, valid_loss, fastai_one_cycle
_RUN_ID = re.compile(r"[0-9a-f]{0,64}")


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
    positive numbers, or None with a reason), and its seconds; else ConfigError."""
    record = attrs.get(ANCHOR_ATTR)
    if record is None:
        return None
    strategies = record.get("strategies") if isinstance(record, Mapping) else None
    if not isinstance(strategies, Mapping) or not _is_number(record.get("seconds")):
        raise ConfigError(f"the study's recorded lr_find: not a record sweeper writes; {_NOTHING}")
    for strategy, found in strategies.items():
        suggestions = found.get("suggestions") if isinstance(found, Mapping) else None
        span = found.get("range", "missing") if isinstance(found, Mapping) else "missing"
        if (
            not _is_name(strategy)
            or not isinstance(suggestions, Mapping)
            or not all(_is_name(k) and _is_number(v) for k, v in suggestions.items())
            or not (span is None or (isinstance(span, list) and len(span) == 2 and all(_is_number(v) for v in span)))
        ):
            raise ConfigError(f"the study's recorded lr_find: not a record sweeper writes; {_NOTHING}")
    return record


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _existing_sqlite(uri: str) -> bool:
    prefix = "sqlite:///"
    return uri.startswith(prefix) and "?" not in uri and Path(uri[len(prefix) :]).is_file()


_NOTHING = "nothing was read or written; give a study that a sweep of yours recorded"
