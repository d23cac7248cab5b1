"""Recorded weights (a checkpoint's model, a run's saved state dict) checked against the model
they are to be loaded into, before anything is loaded.

`torch.load(..., weights_only=True)` runs no code from a file, but what it returns is whatever
the file holds. `load_state_dict` copies a tensor of another dtype into a parameter without a
word, and fails half-way on another shape or a missing key (the model then holds some of the
record and some of its own). So a recorded state dict is loaded only when it has the model's
keys, each a tensor of the model's shape and dtype; anything else is a reason, in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sweeper.boundary.printed import printable

if TYPE_CHECKING:
    import torch

__all__ = ["state_dict_problem"]

SHOWN_KEYS = 3  # of the keys that differ, how many a reason names


def state_dict_problem(state: Any, expected: Mapping[str, torch.Tensor]) -> str | None:
    """Why `state` (a recorded state dict) cannot be loaded where `expected` (the model's own
    state dict) is; None when it fits key by key, in shape and dtype."""
    import torch  # here, not at the top: a sweep's parent imports the checkpoints module and never loads torch

    if not isinstance(state, Mapping):
        return f"it holds a {type(state).__name__}, not a state dict"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return f"its keys are not the model's (missing {_keys(missing)}, unexpected {_keys(unexpected)})"
    for key, own in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"{printable(key)} is a {type(value).__name__}, not a tensor"
        if value.shape != own.shape:
            return f"{printable(key)} has shape {tuple(value.shape)}, the model's {tuple(own.shape)}"
        if value.dtype != own.dtype:
            return f"{printable(key)} is {value.dtype}, the model's {own.dtype}"
    return None


def _keys(keys: list[Any]) -> str:
    shown = ", ".join(printable(repr(k)) for k in keys[:SHOWN_KEYS])
    return f"[{shown}{', ...' if len(keys) > SHOWN_KEYS else ''}]" if keys else "none"
