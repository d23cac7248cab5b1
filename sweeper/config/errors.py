"""The one error a user's mistake raises, and how any error is shown on one line."""

from __future__ import annotations

import errno

__all__ = ["ConfigError", "NotWritten", "disk_full", "error_line", "full_disk_line", "one_line"]

# How the stores say their disk is full when they do not raise OSError: SQLite ("database or
# disk is full"), PostgreSQL ("could not extend file", "No space left on device"), a tracking
# server's error text that quotes its own OSError.
_FULL_DISK_TEXTS = ("database or disk is full", "no space left on device", "could not extend file", "disk quota exceeded")


class ConfigError(ValueError):
    """A config that cannot run; the message names the setting, the value and the fix."""


class NotWritten(RuntimeError):
    """A store or file that could not be written because its disk is full; `what` names it
    (the study, the MLflow store) where the error does not (SQLite's names no file)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


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


def disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, says a disk (or a quota) is full."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(link).lower() for text in _FULL_DISK_TEXTS):
            return True
    return False


def full_disk_line(error: BaseException) -> str:
    """One line for a full disk: the file the error names (else the store a NotWritten names),
    why, and what to do."""
    chain = list(_chain(error))
    files = [str(e.filename) for e in chain if isinstance(e, OSError) and e.filename]
    stores = [e.what for e in chain if isinstance(e, NotWritten)]
    cause = [e for e in chain if not isinstance(e, NotWritten)][-1:] or [error]  # the innermost: the store's own words
    return (
        f"could not write {(files or stores or ['a file'])[0]}: the disk is full ({error_line(cause[0])}); "
        f"free some space there, then run the same command again"
    )


def _chain(error: BaseException | None):
    """`error` and the errors it was raised from (or while handling), outermost first."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
