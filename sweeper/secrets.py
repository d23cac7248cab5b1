"""Keep passwords out of everything sweeper logs, records or prints.

Storage URLs (postgresql://user:password@host/db) and tracking URLs (https://user:token@host) may
carry secrets. A text that may hold URLs anywhere (an error message, a log line, an override Hydra
could not read) goes through `mask_text`, which finds them by pattern and, where a password could
end in more than one place, masks up to the farthest. A whole URL goes through `mask_url`, which
also asks SQLAlchemy's own parser which part it takes for the password. `passwords_in` reads the
passwords out of a command line, so the CLI can mask them whole wherever they turn up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "mask_text", "mask_url", "passwords_in"]

MASK = "***"
# A password shorter than this is masked where it stands in a URL, but not searched for as a
# word in free text: "abc" would also mask every "abc" of an error message.
MIN_SEARCHED_PASSWORD = 4

_SCHEME = r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://"
_HOST = r"[\w.\-:\[\]%]"
_AT_HOST = rf"@(?={_HOST}*(?!{_HOST}|@))"  # an "@" followed by a host, then no further "@"
# scheme://user:password@host -> scheme://user:***@host (any scheme, e.g. postgresql+psycopg2).
# Where the password ends is ambiguous, so the widest reading wins:
# - up to the last "@host" of the URL's run of non-space characters: a password may hold "@",
#   "/", "#", "?" and ":" (SQLAlchemy reads p@ss/w:rd#x@host as the password "p" and the host
#   "ss"; the user meant "p@ss/w:rd#x");
# - where that run holds no "@host", up to the next "@host" on the line: a password with a space.
_CREDENTIALS = re.compile(rf"(?P<head>{_SCHEME}[^:/\s]*):(?P<secret>\S*|(?:(?!://)[^@\n])*?){_AT_HOST}")
# ?password=..., &sslpassword=..., &access_token=..., &client_secret=... query parameters
_QUERY_KEY = r"[?&][\w.\-]*(?:password|passwd|pwd|token|secret|api_?key)="
_QUERY_SECRET = re.compile(rf"(?P<head>{_QUERY_KEY})[^&\s]*", re.I)


def mask_url(url: str | None) -> str | None:
    """The URL with its password (and any password-like query parameter) replaced by ***: the
    masker's widest reading first, then what SQLAlchemy still reads as the password in what is
    left (a user name with an "@" in it, which the pattern does not take for one)."""
    if url is None:
        return None
    masked = mask_text(url)
    parsed = _parse(masked)
    if parsed is None or parsed.password in (None, MASK):
        return masked
    return mask_text(parsed.render_as_string(hide_password=True))


def mask_text(text: str, passwords: Iterable[str] = ()) -> str:
    """`text` with the password of every URL in it, password-like query parameters, and each of
    `passwords` (those of `passwords_in`) wherever it stands, masked."""
    for password in sorted(passwords, key=len, reverse=True):
        if len(password) >= MIN_SEARCHED_PASSWORD:
            text = text.replace(password, MASK)
    text = _CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", text)


def passwords_in(arguments: Iterable[str]) -> set[str]:
    """The passwords of the URLs in `arguments` (a command line, environment values), each read
    every way it may be read: by SQLAlchemy, by the widest reading of the masker's pattern (an
    argument is one URL to its end, spaces included), and from password-like query parameters.
    A password with URL separators in it comes in pieces too: a driver that reads the URL
    otherwise may quote one of them as a host name ("p@ss/word": host "ss")."""
    found: set[str] = set()
    for argument in arguments:
        for start in re.finditer(_SCHEME, argument):
            url = argument[start.start() :]
            widest = re.match(rf"{_SCHEME}[^:/\s]*:(.*)@", url, re.S)
            if widest:
                found.add(widest.group(1))
                found.update(re.split(r"[@/:?#]", widest.group(1)))
            found.update(re.findall(rf"{_QUERY_KEY}([^&]*)", url, re.I))
            parsed = _parse(url)
            found.add(parsed.password or "" if parsed else "")
    return {p for p in found if p}


def _parse(url: str):
    """The URL as SQLAlchemy reads it (sqlalchemy.engine.URL), or None where it reads none."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # not a URL to SQLAlchemy, or a port that is no number
        return None
