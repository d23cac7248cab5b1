"""Keep passwords out of everything sweeper logs, records or prints.

Storage URLs (postgresql://user:password@host/db) and tracking URLs (https://user:token@host) may
carry secrets. Every place that shows or records a URL goes through `mask_url`; a whole text that
may contain URLs (an error message, a log line) goes through `mask_text`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MASK", "mask_text", "mask_url"]

MASK = "***"

# scheme://user:password@  ->  scheme://user:***@   (any scheme, e.g. postgresql+psycopg2)
_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@\s/]*)@")
# ?password=... and &token=... query parameters
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|secret|api_key)=)[^&\s]*", re.I)


def mask_url(url: str | None) -> str | None:
    """The URL with any password (and password-like query parameter) replaced by ***."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    if parts.password is None:
        return mask_text(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:{MASK}@{host}"
    return mask_text(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


def mask_text(text: str) -> str:
    """`text` with the password of every URL in it, and password-like parameters, masked."""
    text = _CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)
