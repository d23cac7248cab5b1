"""A state dict saved in a file (a cached pre-trained body, weights of the user's), read and checked
against the model it is for before anything is loaded (sweeper.boundary.recorded_weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sweeper.boundary.printed import printable
from sweeper.boundary.recorded_weights import state_dict_problem
from sweeper.config import error_line

__all__ = ["weights_for"]

SHOWN_ERROR = 200  # characters of torch's reason a file could not be read (its unpickler's run long)


def weights_for(model: nn.Module, path: Path) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """(the state dict in `path`, None) when it fits `model` key by key, in shape and dtype;
    else (None, why not, in words)."""
    try:
        state = torch.load(path, weights_only=True)  # runs no code from the file
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a file that is not a state dict
        return None, f"it could not be read ({type(error).__name__}: {printable(error_line(error)[:SHOWN_ERROR])})"
    problem = state_dict_problem(state, model.state_dict())
    return (None, problem) if problem else (state, None)
