"""Rules for single settings, each written once: whole numbers, seconds, and how many workers a
machine takes. Which setting takes which rule is `sweeper.config.values`' table.

YAML's `true` is a bool and Python's bool is an int, so an `isinstance(value, int)` check takes
`sweep.n_trials=true` for one trial. Every rule here refuses bools.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper.config.errors import ConfigError

__all__ = ["check_required", "check_sweep_name", "is_number", "seconds", "sweep_folder", "warn_oversubscribed", "whole"]

logger = logging.getLogger(__name__)

# Workers beyond this many per core only queue for the CPU (each trial runs slower, none sooner).
WORKERS_PER_CORE = 2


def is_number(value: object) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(
    setting: str,
    value: object,
    minimum: int = 0,
    *,
    unit: str = "a whole number",
    auto: bool = False,
    null: str | None = None,
    example: object = None,
) -> int | str | None:
    """`value` when it is a whole number >= `minimum`; with `auto`, "auto" passes too, and with
    `null` (what null means, or "") None passes. Else a ConfigError that names the setting."""
    if (auto and value == "auto") or (null is not None and value is None):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    either = "auto or " if auto else ""
    orelse = f", or null{f' {null}' if null else ''}" if null is not None else ""
    raise ConfigError(
        f"{setting}: {value!r} must be {either}{unit} >= {minimum}{orelse}, "
        f"e.g. {setting}={max(minimum, 1) if example is None else example}."
    )


def seconds(setting: str, value: object, *, null: str | None = None, example: object = 10) -> float | None:
    """`value` when it is a positive, finite number of seconds (None too, with `null`)."""
    if null is not None and value is None:
        return value
    if is_number(value) and math.isfinite(value) and value > 0:
        return value
    orelse = f", or null{f' {null}' if null else ''}" if null is not None else ""
    raise ConfigError(f"{setting}: {value!r} must be seconds > 0{orelse}, e.g. {setting}={example}.")


def warn_oversubscribed(workers: object, cores: int) -> None:
    """Warn (not refuse: the user may know better) when sweep.workers is far above the cores."""
    if is_number(workers) and workers > WORKERS_PER_CORE * cores:
        _warn_once(int(workers), cores)


@functools.cache  # the launcher plans its slots more than once; say it once
def _warn_once(workers: int, cores: int) -> None:
    logger.warning(
        "sweeper: sweep.workers=%d is %.0f times this machine's %d cores; the workers would queue "
        "for the CPU, each trial slower and none sooner; sweep.workers=%d (or auto) uses every core.",
        workers,
        workers / cores,
        cores,
        cores,
    )


# A sweep's name is a folder under results/sweeps/ and a value in MLflow filters: one plain path
# component, nothing a filter or a shell would read otherwise.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}")


def sweep_folder(results_dir: str | Path, sweep: str) -> Path:
    """Where a sweep's files go (worker logs, checkpoints, reports): results/sweeps/<sweep>/."""
    return Path(results_dir) / "sweeps" / sweep


def check_sweep_name(name: str, setting: str = "sweep.name") -> str:
    """`name`, if it can name a sweep; else ConfigError saying what a name may hold."""
    if NAME.fullmatch(name) and ".." not in name:
        return name
    raise ConfigError(
        f"{setting}: {name!r} cannot name a sweep (it becomes a folder under results/sweeps/ and an "
        f"MLflow tag); use letters, digits and . _ + = - only, starting with a letter or digit, "
        f"e.g. sweep.name=mlp-digits-shapes."
    )


def check_required(cfg: DictConfig, nodes: Iterable[str]) -> None:
    """Every `???` value of these config nodes is set. A data option's `num_classes: ???` is
    read through interpolations (`data.source.num_classes: ${data.num_classes}`); unset, it would
    be reported by the inner key, which no README names: name the key the user sets."""
    for node in nodes:
        if node not in cfg or not isinstance(cfg[node], DictConfig):
            continue
        missing = _unset(OmegaConf.to_container(cfg[node], resolve=False), node)
        if missing:
            key = missing[0]
            option = cfg[node].get("name")
            needed_by = f"{node}={option}" if isinstance(option, str) else f"the {node} config"
            raise ConfigError(f"{key}: not set, and {needed_by} needs it; give it on the command line: {key}=...")


def _unset(value: object, key: str) -> list[str]:
    """The keys under `key` whose value is `???` itself (not an interpolation that reads one)."""
    if isinstance(value, dict):
        return [found for name, item in value.items() for found in _unset(item, f"{key}.{name}")]
    return [key] if value == "???" else []
