"""The config's schema: every setting there is, and a mistyped one refused with the closest.

    train.epoch: no such setting; did you mean train.epochs?

The schema is the config tree itself: conf/config.yaml and every option of every group, ours and
those of the user's config directories (their models and data bring their own keys). A key is
known where one of those files sets it at that place (`model.groups` because a model option
sets it). Why not dataclasses in Hydra's ConfigStore: every setting would be written twice (in
the YAML, with its comment, and in a dataclass) and OmegaConf 2.3's types cannot say what many
settings take (`auto` or a whole number: it has no Union), so the dataclasses would hold the
names and `Any`, the facts the YAML states already. What the files cannot say is said here:

- a node that builds something (`_target_`) takes its target's arguments, whatever their names:
  `+model.net.dropout=0.1` adds one;
- some mappings are tables whose keys are names the user picks (OPEN);
- experiment overlays change settings that others define: their keys are not settings of their own.

The rules of single values (whole numbers, seconds, names) are `sweeper.config.values`' table,
checked right after the keys.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig

from sweeper.config.errors import ConfigError

__all__ = ["OPEN", "ConfigFiles", "Schema", "check_keys", "config_files", "schema_of"]

# Mappings whose keys are the user's names, not settings: metric names (task.metrics), the shapes
# a space compares and the other keys it samples (checked by sweeper.sweep.space), objectives.
OPEN = frozenset({"task.metrics", "search.shape", "search.params", "sweep.objectives"})
# Groups whose options change the settings of others rather than define their own.
OVERLAYS = frozenset({"experiment"})
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)


@dataclass
class Schema:
    """The keys each mapping of the config may hold, by its dotted path ("" is the root)."""

    keys: dict[str, set[str]] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)

    def add(self, path: str, node: Mapping) -> None:
        known = self.keys.setdefault(path, set())
        for key, value in node.items():
            key = str(key)
            known.add(key)
            if isinstance(value, Mapping):
                self.add(_join(path, key), value)

    def is_open(self, path: str, node: Mapping | None = None) -> bool:
        """Whether any key may be set under `path`: a table of the user's names, a node that
        builds something (its target's arguments), a mapping that no file fills."""
        known = self.keys.get(path)
        return path in OPEN or not known or "_target_" in known or (node is not None and "_target_" in node)

    def unknown(self, path: str, key: str) -> str:
        """The one line that refuses `key` under `path`, with the closest known key."""
        full = _join(path, key)
        known = sorted(self.keys.get(path, set()) | (self.groups if not path else set()))
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f"{full}: no such setting; did you mean {_join(path, close[0])}?"
        where = f"the settings of {path}" if path else "the top-level settings and groups"
        return f"{full}: no such setting; {where} are {', '.join(known)}."


ConfigFiles = tuple[tuple[Path, Path, int], ...]  # (directory, file, mtime) of every file of a tree


def config_files(config_dirs: Iterable[Path]) -> ConfigFiles:
    """The files of the config tree made of these directories (ours first), with their mtimes:
    what is read again when a file is added, removed or changed."""
    return tuple((root, path, path.stat().st_mtime_ns) for root in map(Path, config_dirs) for path in sorted(root.rglob("*.yaml")))


@functools.lru_cache(maxsize=8)
def schema_of(files: ConfigFiles) -> Schema:
    """The schema of the config tree whose files these are (`config_files`)."""
    schema = Schema()
    for root, path, _ in files:
        group = path.parent.relative_to(root).as_posix()
        group = "" if group == "." else group
        if group:
            schema.groups.add(group.split("/")[0])
        if group.split("/")[0] in OVERLAYS:
            continue
        text = path.read_text()
        try:
            node = yaml.safe_load(text)
        except yaml.YAMLError:
            continue  # composition reports a file that is not YAML, with its line
        if not isinstance(node, Mapping):
            continue
        node = {k: v for k, v in node.items() if k not in ("defaults", "hydra")}
        package = _PACKAGE.search(text)
        where = package[1] if package else group.replace("/", ".")
        where = "" if where == "_global_" else where.replace("_group_", group.replace("/", "."))
        parts = where.split(".") if where else []
        for index, part in enumerate(parts):  # the mappings the package lies in: a.b is b in a
            schema.keys.setdefault(".".join(parts[:index]), set()).add(part)
        schema.add(where, node)
    return schema


def check_keys(cfg: DictConfig, schema: Schema, path: str = "") -> None:
    """Refuse the first key of `cfg` that the schema does not know (ConfigError, one line)."""
    if schema.is_open(path, cfg):
        return
    known = schema.keys[path]
    for key in cfg.keys():
        key = str(key)
        if key not in known:
            raise ConfigError(schema.unknown(path, key))
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing() and not child._is_interpolation():
            check_keys(child, schema, _join(path, key))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
