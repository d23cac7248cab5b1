"""A study as a sweep records it (its attributes, each trial's overrides and outcome), written
straight into SQLite: what confirm, the ablation, the verdict and the report read, made in
milliseconds instead of by a sweep. Its trainer is the verdict worlds' (helpers.verdict_worlds.World)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import optuna

BASE = ["train.device=cpu", "train.epochs=1", "tracking=none"]
WORLD = json.dumps("helpers.verdict_worlds.World")


def write_recorded_study(folder: Path, name: str, trials: Sequence[tuple[str, float, Sequence[str], dict]]) -> str:
    """The study `name` in folder/studies.db, a trial per (strategy, value, its overrides beyond
    the strategy's, its other user attrs); returns the storage URL."""
    storage = f"sqlite:///{folder}/studies.db"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    attrs = {"overrides": BASE, "config_dirs": [], "objectives": ["accuracy"], "definition": {"trainer": WORLD}}
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for strategy, value, overrides, more in trials:
        record = {
            "overrides": [*BASE, f"lr={strategy}", *overrides],
            "status": "finished",
            "strategy": strategy,
            "shape": "fastai_one_cycle",
        }
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={**record, **more}))
    return storage
