"""What a sweep is: its definition, recorded when it is created and compared on every resume.

A sweep's name is only a handle. Two commands that share a name but search other spaces, with
other samplers, on other models or data, are two sweeps: trials of both in one study would make
every comparison after it wrong (the strategy ranking, `sweeper confirm`, the report). So the
study keeps the definition it was created with, and a command under the same name with another
definition is refused before anything is written, naming the differences. `sweep.allow_changes=true`
continues anyway; the study keeps the change (who changed what, when) next to the new definition.

What belongs to the definition: the search space, the sampler, the pruner, the objectives, and
what a trial trains (model, data, slice, shape, optimizer, trainer settings, the trainer itself).
What does not: how many trials, workers, timeouts, where the records go (those change between
resumes on purpose). The code version is kept as information only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from sweeper.boundary.printed import printable
from sweeper.boundary.recorded_sweep import CHANGES_ATTR, DEFINITION_ATTR  # what the study keeps; read there, checked
from sweeper.boundary.renamed import current_name
from sweeper.config import plain
from sweeper.secrets import mask_text
from sweeper.trial.spec import TRIAL_NODES

__all__ = [
    "CHANGES_ATTR",
    "DEFINITION_ATTR",
    "change_record",
    "definition_of",
    "describe_differences",
    "differences",
]

SHOWN_DIFFERENCES = 6  # in the one-line refusal; the rest are counted


def definition_of(cfg: DictConfig, space_lines: Sequence[str], fixed: Sequence[str], objectives: Mapping[str, str]) -> dict[str, str]:
    """The sweep's definition, flat: {"sampler._target_": '"optuna.samplers.TPESampler"', ...}.
    `space_lines` are the space's "name: values" lines (SearchSpace.describe()), `fixed` its
    plain overrides (search.params that take one value).

    Values are JSON text, so they compare exactly and store in any Optuna storage."""
    nodes: dict[str, Any] = {
        "space": dict(line.split(": ", 1) for line in space_lines),
        "fixed": dict(override.split("=", 1) for override in fixed),
        "objectives": dict(objectives),
        "sampler": plain(cfg.get("sampler")),
        "pruner": plain(cfg.get("pruner")),
        "trainer": str(cfg.sweep.trainer),
        **{key: plain(cfg.get(key)) for key in TRIAL_NODES},
    }
    return {key: mask_text(json.dumps(value, sort_keys=True)) for key, value in _flatten(nodes).items()}


def _flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(recorded: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """One entry per setting that differs: `key: recorded -> now` (absent: "unset"). `recorded`
    is the study's, as sweeper.boundary.recorded_sweep.recorded_definition checked it: its text
    is shown escaped (a shared study's record may hold terminal codes)."""
    found = []
    for key in sorted(set(recorded) | set(now)):
        old, new = _current(recorded.get(key)), now.get(key)
        if old != new:
            found.append(f"{printable(key)}: {_shown(old)} -> {_shown(new)}")
    return found


def _current(value: str | None) -> str | None:
    """A recorded value (JSON text) with a name of code written before the packages moved as it
    is called now: a sweep made before the move resumes as the same sweep."""
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):  # not JSON, or nested past what the parser takes: compared as text
        return value
    renamed = current_name(decoded)
    return value if renamed == decoded else json.dumps(renamed)


def _shown(value: str | None) -> str:
    if value is None:
        return "unset"
    text = printable(value.strip('"') if value.startswith('"') else value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_differences(found: Sequence[str]) -> str:
    """The differences in a line: per config node the one that says most (a changed `_target_`
    says the sampler or pruner changed, its settings follow from it), then how many more."""
    by_node: dict[str, list[str]] = {}
    for entry in found:
        by_node.setdefault(entry.split(".", 1)[0].split(":", 1)[0], []).append(entry)
    shown = []
    for entries in by_node.values():
        targets = [e for e in entries if e.split(":", 1)[0].endswith("._target_")]
        shown.append((targets or entries)[0])
    more = len(found) - len(shown[:SHOWN_DIFFERENCES])
    return "; ".join(shown[:SHOWN_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")


def change_record(found: Sequence[str], code_version: str) -> dict[str, Any]:
    """What the study keeps of a sweep continued under another definition."""
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code_version": code_version, "differences": list(found)}
