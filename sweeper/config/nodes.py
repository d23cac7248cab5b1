"""Config nodes as plain Python values (dicts, lists, scalars): what code outside the config reads."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

__all__ = ["plain"]


def plain(node: Any, resolve: bool = True) -> Any:
    """`node` as plain containers (interpolations resolved, unless `resolve` is False); a value
    that is not a config node comes back as it is."""
    return OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node
