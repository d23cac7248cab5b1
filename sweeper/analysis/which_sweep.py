"""Which sweep a command after the sweep reads (`report`, `confirm`, `ui`): its name from the
command line, and its study from the configured storage, as the checked in-memory copy that
sweeper.boundary.checked_study builds: the raw stored study never reaches a reader.

Light on purpose (Optuna, no pandas, matplotlib, torch or MLflow): a sweep that is not there is
said in a second, before the commands load what their work needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from omegaconf import DictConfig

from sweeper.boundary.checked_study import CheckedStudy, checked_study
from sweeper.config import ConfigError
from sweeper.config.rules import check_sweep_name
from sweeper.sweep.storage import storage_of

__all__ = ["load_sweep_study", "split_sweep_name"]


def split_sweep_name(words: Sequence[str]) -> tuple[str | None, list[str]]:
    """`sweeper report [NAME] [overrides]`: the one word without "=" is the sweep's name."""
    names = [w for w in words if "=" not in w]
    if len(names) > 1:
        raise ConfigError(f"sweep name: {names} are several names; give one sweep name, and settings as key=value.")
    return (names[0] if names else None), [w for w in words if "=" in w]


def load_sweep_study(cfg: DictConfig, name: str | None = None) -> CheckedStudy:
    """The sweep's study in the configured storage (`storage.url`), by name (default sweep.name),
    checked (sweeper.boundary.checked_study)."""
    name = check_sweep_name(name, "sweep name") if name else str(cfg.sweep.name)
    spec = storage_of(cfg)
    if spec.path is not None and not spec.path.exists():
        # From another folder, results/ is another folder's: name the setting that finds the sweep.
        raise ConfigError(
            f"storage.url: {spec.label()} does not exist (no {spec.path.absolute()}); a sweep run in another "
            f"folder is found with its results folder, results_dir=/that/folder/results (or storage.url=... "
            f"for its storage); else run `sweeper sweep` first."
        )
    storage = spec.open()
    try:
        raw = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = optuna.get_all_study_names(storage)
        raise ConfigError(
            f"sweep name: no sweep {name!r} in {spec.label()}; it holds {known or 'none'}. Give one of "
            f"them (sweeper report NAME), or the storage the sweep used (storage.url=...)."
        ) from None
    return checked_study(raw)
