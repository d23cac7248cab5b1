"""The one error a user's mistake raises, and how any error is shown on one line."""

from __future__ import annotations

__all__ = ["ConfigError", "error_line", "one_line"]


class ConfigError(ValueError):
    """A config that cannot run; the message names the setting, the value and the fix."""


def error_line(error: BaseException) -> str:
    """An error's first line, for one-line messages (Hydra's run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(error: BaseException) -> str:
    """A user error's message on one line. OmegaConf puts the setting on a later line
    ("full_key: sweep.n_trials"): it goes first, as in our own messages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    key = getattr(error, "full_key", None)
    if key:
        details = ("full_key:", "object_type=", "reference_type=")
        lines = [f"{key}: {lines[0]}", *(line for line in lines[1:] if not line.startswith(details))]
    return " ".join(lines)
