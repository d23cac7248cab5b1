"""The one error a user's mistake raises, and how any error is shown on one line."""

from __future__ import annotations

__all__ = ["ConfigError", "error_line"]


class ConfigError(ValueError):
    """A config that cannot run; the message names the setting, the value and the fix."""


def error_line(error: BaseException) -> str:
    """An error's first line, for one-line messages (Hydra's run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
