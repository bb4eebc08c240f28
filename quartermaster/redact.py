"""Passwords out of URLs before they are printed or logged.

    mask_url("postgresql://qm:s3cret@db:5432/qm")   # "postgresql://qm:****@db:5432/qm"
    mask_urls("cannot reach postgresql://qm:s3cret@db/qm: refused")  # the same, in text

What is masked: the password of a URL's user information (`user:password@`), and the
value of a query parameter that carries one (`?password=...`, libpq's and asyncpg's
spelling; also `sasl_password`, `passwd`, `secret`, `token`). The user name, host,
port and path stay, so an operator still sees where a process points. Pure: no I/O.
"""

from __future__ import annotations

import re

MASK = "****"
# Query parameters whose value is a secret (compared lower-cased).
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "sasl_password", "secret", "token"})
# A URL inside free text: a scheme, "://", then everything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PARAM = re.compile(r"(^|&)([^=&#]+)=([^&#]*)")


def _mask_param(match: re.Match[str]) -> str:
    before, name, value = match.groups()
    if name.lower() in _SECRET_PARAMS and value:
        return f"{before}{name}={MASK}"
    return match.group(0)


def mask_url(url: str) -> str:
    """`url` with its password (and secret query parameters) replaced by ****; a
    string that is not a URL, or has no password, comes back unchanged.

    The user information ends at the last "@" before any "?" or "#": a password with
    an unencoded "@" or "/" is masked whole, never cut where a parser would cut it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    query_at = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, query_at)
    user, colon, password = rest[: max(at, 0)].partition(":")
    if at >= 0 and colon and password and "/" not in user:
        rest = f"{user}:{MASK}{rest[at:]}"
    if "?" in rest:
        before, _, query = rest.partition("?")
        rest = f"{before}?{_PARAM.sub(_mask_param, query)}"
    return f"{scheme}://{rest}"


def mask_urls(text: str) -> str:
    """`text` with `mask_url` applied to every URL in it (log lines, error messages)."""
    if "://" not in text:
        return text  # the common case, without a regular expression
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
