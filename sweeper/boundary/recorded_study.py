"""What a study recorded, as the commands that come after a sweep may use it.

    config = trial_config(trial_overrides(trial.user_attrs), study_config_dirs(study.user_attrs), allowed)
    trainer = study_trainer(study.user_attrs, allowed)

A study may be shared (a database server), so whatever it recorded is untrusted input, as a
recorded config is (sweeper.boundary.recorded_config). A trial's config is recomposed from the
overrides the study recorded, and then read as a recorded config is:

1. Each recorded override is text within limits, sets no `hydra.` setting (a search path such as
   `pkg://os` imports a module), and calls no resolver (`${oc.env:...}` would put the confirming
   user's environment into the runs' records).
2. The config composed from them is resolved once, by node interpolation alone, without the
   `storage` and `tracking` nodes: those are the user's own (where their runs are recorded),
   never the record's, and no recorded value may interpolate them.
3. The resolved plain container is checked (every import against the allow-list), then the
   user's own storage and tracking nodes join it, already resolved: what is built is what was
   checked, with nothing left to resolve.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeper.boundary.printed import printable
from sweeper.boundary.recorded_config import (
    READ_LIMITS,
    WRITE_FOLDERS,
    Allowed,
    _paths,
    _rename_old_names,
    _resolvers,
    _target,
    check_config,
    resolve_recorded,
)
from sweeper.boundary.renamed import current_name
from sweeper.config import ConfigError, compose_config
from sweeper.secrets import mask_text

__all__ = ["USERS_OWN", "study_config_dirs", "study_trainer", "trial_config", "trial_overrides", "unchecked_trial_config"]

USERS_OWN = ("storage", "tracking")  # where the user's runs are recorded: never read from a record
DEFAULT_TRAINER = "sweeper.training.engine"
MAX_OVERRIDES = 1_000


def trial_overrides(attrs: Mapping[str, Any], key: str = "overrides") -> list[str]:
    """The overrides a study (or a trial) recorded under `key`, each checked (step 1)."""
    overrides = attrs.get(key) or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"the study's recorded {key}: not a list of overrides; {_NOTHING_RUN}")
    _check_overrides(overrides, key)
    return overrides


def study_config_dirs(attrs: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """The config directories the sweep was composed with (recorded), then `extra`."""
    recorded = attrs.get("config_dirs") or []
    if not isinstance(recorded, list) or not all(isinstance(d, str) and len(d) <= 4096 for d in recorded):
        raise ConfigError(f"the study's recorded config_dirs: not a list of folders; {_NOTHING_RUN}")
    for folder in recorded:
        # Hydra reads a search path as a list: a comma or bracket would add one of the record's choosing.
        if any(c in folder for c in ",[]'\"=") or "://" in folder:
            raise ConfigError(
                f"the study's recorded config_dirs: {printable(repr(folder))} is not a folder sweeper records; {_NOTHING_RUN}"
            )
    return [*recorded, *extra]


def study_trainer(attrs: Mapping[str, Any], allowed: Allowed) -> str:
    """The trainer module the sweep's trials ran (its recorded definition), checked against the
    allow-list before anything imports it."""
    definition = attrs.get("definition") or {}
    recorded = definition.get("trainer") if isinstance(definition, Mapping) else None
    if recorded is None:
        return DEFAULT_TRAINER
    try:
        name = current_name(json.loads(recorded))
    except (TypeError, ValueError):
        raise ConfigError(
            f"the study's recorded trainer: {printable(repr(recorded))[:200]} is not one sweeper records; {_NOTHING_RUN}"
        ) from None
    check_config({"sweep": {"trainer": name}}, allowed)
    return name


def unchecked_trial_config(overrides: Sequence[str], config_dirs: Sequence[str]) -> dict[str, Any]:
    """A trial's config from checked recorded overrides (steps 1 and 2): resolved, plain, and
    without the user's own nodes. Its imports are not checked: for reading it, not building it."""
    _check_overrides(overrides)
    composed = OmegaConf.to_container(compose_config(overrides, config_dirs), resolve=False)
    for node in USERS_OWN:
        composed.pop(node, None)
    config = resolve_recorded(OmegaConf.create(composed))
    _rename_old_names(config)
    return config


def trial_config(overrides: Sequence[str], config_dirs: Sequence[str], allowed: Allowed) -> DictConfig:
    """A trial's config from the overrides its study recorded, checked (step 3): the config to
    build, holding no interpolation."""
    config = unchecked_trial_config(overrides, config_dirs)
    for node in (node for _, node in _paths(config) if isinstance(node, dict) and _target(node) in WRITE_FOLDERS):
        node[WRITE_FOLDERS[_target(node)]] = str(allowed.writes_to)  # the user's own results, not the record's
    check_config(config, allowed)
    config.update(allowed.own_nodes)
    return OmegaConf.create(config)


def _check_overrides(overrides: Sequence[str], key: str = "overrides") -> None:
    """Step 1 for each override, and no more of them than a sweep records (whichever reader
    joined them: a report's table, an ablation's changed copy)."""
    if len(overrides) > MAX_OVERRIDES:
        raise ConfigError(
            f"the study's recorded {key}: {len(overrides)} overrides, more than a sweep records ({MAX_OVERRIDES}); {_NOTHING_RUN}"
        )
    for override in overrides:
        _check_override(override)


def _check_override(override: str) -> None:
    if len(override) > READ_LIMITS.string:
        raise ConfigError(f"the study's recorded override of {len(override)} characters is longer than sweeper records; {_NOTHING_RUN}")
    key, _, value = override.partition("=")
    if key.lstrip("+~").split(".")[0].split("/")[0] == "hydra":
        raise ConfigError(f"the study's recorded override {printable(mask_text(override))!r} sets Hydra itself; {_NOTHING_RUN}")
    resolvers = _resolvers(printable(key), value)
    if resolvers:
        raise ConfigError(
            f"{printable(key)}: the study's recorded override {printable(mask_text(override))!r} calls the resolver "
            f"{printable(resolvers[0])}; a recorded override is resolved with plain ${{a.b}} interpolation only, "
            f"never with this machine's environment or a resolver. {_NOTHING_RUN}"
        )


_NOTHING_RUN = "nothing was run; give a study that a sweep of yours recorded"
