"""Keep passwords out of everything sweeper logs, records or prints.

Storage URLs (postgresql://user:password@host/db) and tracking URLs (https://user:token@host) may
carry secrets. Every place that shows or records a URL goes through `mask_url`; a whole text that
may contain URLs (an error message, a log line) goes through `mask_text`.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_text", "mask_url"]

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host (any scheme, e.g. postgresql+psycopg2).
# The password runs to the "@" that is followed by a host (no further "@"): SQLAlchemy takes
# "/", "@", "#", "?" and ":" in a password unescaped, and all of it must be masked.
_HOST = r"[\w.\-:\[\]%]"
_CREDENTIALS = re.compile(
    rf"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<secret>\S*?)@(?={_HOST}*(?!{_HOST}|@))"
)
# ?password=... and &token=... query parameters
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|secret|api_key)=)[^&\s]*", re.I)


def mask_url(url: str | None) -> str | None:
    """The URL with any password (and password-like query parameter) replaced by ***."""
    return None if url is None else mask_text(url)


def mask_text(text: str) -> str:
    """`text` with the password of every URL in it, and password-like parameters, masked."""
    text = _CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)
