"""A trial's settings as a user types them, and the command that reruns a recorded trial: text
the user is told to type, so it is made only of values checked here, never of a record's text.

A study may be shared: a recorded override can name code (`model.net._target_=plant.Net`) or a
look-alike name (`ѕweeper` with a Cyrillic letter), and shown as a command it would be typed.
So the settings are rebuilt from the config the boundary composed and checked: the lr as parsed
(its numbers formatted here), a config group's option only where it is one of the options on
disk, and a searched setting only where it is a number; anything else is left out. A recorded
trial is rerun by its MLflow run id (`sweeper rerun`, which reads it through the boundary), and
only an id of MLflow's form is shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper.boundary.printed import printable
from sweeper.config.compose import config_dir
from sweeper.schedules.slices import parse_lr

__all__ = ["rerun_command", "typed_settings"]

KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")  # no `_target_`, no `hydra.`-like escape
OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids


def typed_settings(
    overrides: Sequence[str], base: Sequence[str], cfg: DictConfig, config_dirs: Sequence[str] = ()
) -> tuple[str, float | None]:
    """(the settings `overrides` drew beyond the sweep's `base`, as typed: the lr the fastai way,
    then the shape, its settings and any searched number; the head lr), from `cfg`, the checked
    config they composed."""
    spec = parse_lr(OmegaConf.to_container(cfg.lr, resolve=True))
    lr = spec.describe().replace(" ", "")
    typed = [f"lr='{lr}'" if "(" in lr else f"lr={lr}"]
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if override in base or key.startswith("lr") or not KEY.fullmatch(key):
            continue
        shown = _option(key, value, config_dirs) if "." not in key else _number(OmegaConf.select(cfg, key, default=None))
        if shown is not None:
            typed.append(f"{key}={shown}")
    return printable(" ".join(typed)), spec.high


def rerun_command(run_id: object) -> str | None:
    """`sweeper rerun <run id>` for a recorded MLflow run id of MLflow's form; None for anything else."""
    return f"sweeper rerun {run_id}" if isinstance(run_id, str) and RUN_ID.fullmatch(run_id) else None


def _option(group: str, value: str, config_dirs: Sequence[str]) -> str | None:
    """`value` where it is an option of config group `group` (a file of ours or of the sweep's config directories)."""
    if not OPTION.fullmatch(value):
        return None
    dirs = [config_dir(), *(Path(d) for d in config_dirs)]
    return value if any((d / group / f"{value}.yaml").is_file() for d in dirs) else None


def _number(value: object) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return None
