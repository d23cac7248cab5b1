"""Names that runs recorded before sweeper's packages moved still carry, and what each is now.

A recorded config names code by its dotted path (`model.net._target_: sweeper.models.MLP`,
`sweep.trainer: sweeper.trainer`). Those modules moved into packages; a record keeps the name it
was written with, so every reader maps an old name to today's before it checks or compares it.
Only whole module names map: `sweeper.models.MLP` becomes `sweeper.zoo.models.MLP`, and a name
under no moved module is returned as it is (the allow-list then judges it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["RENAMED_MODULES", "current_name"]

RENAMED_MODULES = {
    "sweeper.models": "sweeper.zoo.models",
    "sweeper.data": "sweeper.zoo.data",
    "sweeper.vision": "sweeper.zoo.vision",
    "sweeper.text": "sweeper.zoo.transformers",
    "sweeper.groups": "sweeper.zoo.groups",
    "sweeper.tasks": "sweeper.zoo.tasks",
    "sweeper.shapes": "sweeper.schedules.shapes",
    "sweeper.trainer": "sweeper.training.engine",  # sweep.trainer names the module itself
}


def current_name(name: Any) -> Any:
    """Today's name for a dotted name a record holds; anything else unchanged."""
    if not isinstance(name, str):
        return name
    if name in RENAMED_MODULES:
        return RENAMED_MODULES[name]
    module, dot, attribute = name.rpartition(".")
    return f"{RENAMED_MODULES[module]}.{attribute}" if dot and module in RENAMED_MODULES else name
