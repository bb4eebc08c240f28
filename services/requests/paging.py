"""Keyset paging for RequestService's lists: a page token says where the last page
ended (its last request's `created_at` and `request_id`), and the next page starts
after that request in the list's order. Pure: tokens to and from positions.

Why not an offset: a request made between two pages shifts every later row, so a
newest-first list read by offset shows one request twice (and an approved one leaving
ListAwaitingMe skips one). A position stays where it is whatever is inserted or leaves
around it: every request there when paging began is listed once, in order.

A token is opaque to callers: base64url of `<list>|<created_at in epoch micros>|<id>`.
Naming its list lets a token of ListMine given to ListAll be refused rather than start
it at a place that means nothing there.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from quartermaster.validation import MAX_ID_LENGTH, text_problem

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LISTS = frozenset({"mine", "awaiting", "all"})
# The longest raw token: the longest list name, a signed 64-bit count of micros and the
# longest request_id (validation.require_id counts characters; UTF-8 takes up to 4
# bytes of each), with the two separators.
_MAX_RAW = len("awaiting") + 1 + len(str(-(2**63))) + 1 + 4 * MAX_ID_LENGTH
# In characters of the token (base64 without padding) made of that many bytes.
MAX_TOKEN = -(-_MAX_RAW * 4 // 3)
_MICROS = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: str.isdigit takes "²"


class BadToken(ValueError):
    """A page token this service did not give for this list (the message says how)."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: its last request's creation time (aware UTC, microseconds,
    as PostgreSQL keeps it) and id, the list's tie-breaker."""

    created_at: datetime
    request_id: str


def _micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def token_of(list_name: str, at: Position) -> str:
    """The opaque token of the page after `at` in `list_name` ("mine", "awaiting",
    "all"). ValueError for another list name."""
    if list_name not in LISTS:
        raise ValueError(f"list_name: {list_name!r} is not one of {sorted(LISTS)}")
    raw = f"{list_name}|{_micros(at.created_at)}|{at.request_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def position_of(token: str, list_name: str) -> Position:
    """The position `token` (from token_of) names in `list_name`. BadToken when it is
    longer than MAX_TOKEN characters, not a token (not base64 of UTF-8, a time that is
    not ASCII digits or out of datetime's range, a request id no request can have:
    blank, over MAX_ID_LENGTH characters, NUL or a lone surrogate), or one of another
    list."""
    if len(token) > MAX_TOKEN:
        raise BadToken(f"longer than any token this service gives ({len(token)} characters)")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadToken("not a token this service gave") from None
    parts = raw.split("|", 2)
    if len(parts) != 3 or not _MICROS.fullmatch(parts[1]) or not parts[2].strip():
        raise BadToken("not a token this service gave")
    if len(parts[2]) > MAX_ID_LENGTH or text_problem(parts[2]):
        raise BadToken("not a token this service gave (its request id is not one)")
    if parts[0] != list_name:
        raise BadToken(f"a token of list {parts[0]!r}, not of {list_name!r}")
    try:
        at = EPOCH + timedelta(microseconds=int(parts[1]))
    except OverflowError:
        raise BadToken("not a token this service gave") from None
    return Position(at, parts[2])
