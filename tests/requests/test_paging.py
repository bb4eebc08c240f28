"""Page tokens (services.requests.paging), without I/O: a position survives the trip
through its token to the microsecond, and a token that is not one, or is another
list's, is refused saying so. Paging over the real store with inserts between pages:
tests/requests/test_api.py."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from services.requests.paging import MAX_TOKEN, BadToken, Position, position_of, token_of


def test_a_position_survives_its_token_exactly() -> None:
    for at in (
        datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ):
        pos = Position(at, "cr-ünï|code")  # the separator inside an id is kept whole
        for name in ("mine", "awaiting", "all"):
            token = token_of(name, pos)
            assert "=" not in token
            assert position_of(token, name) == pos


def test_a_token_of_another_list_or_none_at_all_is_refused_saying_why() -> None:
    token = token_of("mine", Position(datetime(2026, 12, 1, tzinfo=UTC), "cr-1"))
    with pytest.raises(BadToken, match="a token of list 'mine', not of 'all'"):
        position_of(token, "all")
    made_up = [
        "x", "50", "!!!!", base64.urlsafe_b64encode(b"mine|soon|cr-1").decode(),
        base64.urlsafe_b64encode(b"mine|12|").decode(),
        base64.urlsafe_b64encode(b"mine|99999999999999999999999|cr-1").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode("mine|²|cr-1".encode()).decode(),  # isdigit, not int
        base64.urlsafe_b64encode(b"mine|1|cr-1\x00").decode(),  # NUL: no request's id
        base64.urlsafe_b64encode(b"mine|1|   ").decode(),
        base64.urlsafe_b64encode(b"mine|1|" + b"x" * 257).decode(),
    ]  # fmt: skip
    for bad in made_up:
        with pytest.raises(BadToken, match="not a token this service gave"):
            position_of(bad, "mine")
    with pytest.raises(BadToken, match="longer than any token"):
        position_of("a" * (MAX_TOKEN + 1), "mine")
    with pytest.raises(ValueError, match="list_name"):
        token_of("everything", Position(datetime(2026, 12, 1, tzinfo=UTC), "cr-1"))


def test_the_longest_request_ids_give_tokens_the_service_takes_back() -> None:
    """A request_id is up to 256 characters of up to 4 UTF-8 bytes each: its token is
    longer than 256 characters, and still a token."""
    for rid in ("é" * 256, "😀" * 256, "x" * 256):
        for at in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
            for name in ("mine", "awaiting", "all"):
                token = token_of(name, Position(at, rid))
                assert len(token) <= MAX_TOKEN
                assert position_of(token, name) == Position(at, rid)
