"""Recorded text as it may be printed: a record's strings reach terminals, reports and logs.

A string from a record (a name, a reason, an override) may hold terminal escape codes, which
can erase or rewrite the line they are printed on, newlines that forge a line of sweeper's own,
or invisible characters (bidi overrides, zero-width spaces) that make a text read as another.
Printed, each of them is shown escaped (`\\x1b`, `\\n`, `\\u202e`); a dotted name (code a record
asks to import) also has every non-ASCII letter escaped, so that a look-alike (a Cyrillic `ѕ`
in `ѕweeper`) reads as what it is.
"""

from __future__ import annotations

import unicodedata
from typing import Any

__all__ = ["printable", "printable_name"]

_HIDDEN = ("Cc", "Cf", "Co", "Cs", "Zl", "Zp")  # control, format (bidi, zero-width), private, surrogate, separators


def printable(text: Any, keep: str = "") -> str:
    """`text` with each control or invisible character escaped, but those in `keep` (a
    traceback keeps its newlines)."""
    text = str(text)
    return "".join(c if c in keep or unicodedata.category(c) not in _HIDDEN else _escaped(c) for c in text)


def printable_name(name: Any) -> str:
    """A dotted name as it may be printed: ASCII alone, anything else escaped; a name that is not
    text is said to be one."""
    if not isinstance(name, str):
        return f"{printable(repr(name))} (not a dotted name)"
    return "".join(c if " " < c < "\x7f" else _escaped(c) for c in name)


def _escaped(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
