"""Reading a click payload and refusing replays (pure)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from services.notifier.slack_actions import (
    Click,
    PayloadError,
    ReplayGuard,
    click_of,
    form_payload,
)


def button_value(request_id: str, version: int, decision: str = "") -> str:
    """The button value as the core's rendering writes it, naming the decision or not."""
    value: dict[str, object] = {"request_id": request_id, "version": version}
    return json.dumps(value | ({"decision": decision} if decision else {}))


def block_actions(action_id: str = "approve", value: object = None, **extra: Any) -> dict[str, Any]:
    if value is None:
        value = button_value("r-9", 4)
    return {
        "type": "block_actions",
        "user": {"id": "U1"},
        "container": {"channel_id": "C1"},
        "actions": [{"action_id": action_id, "value": value}],
        **extra,
    }


def test_our_click_is_read_with_the_conversation_to_answer_in() -> None:
    assert click_of(block_actions()) == Click("r-9", 4, "approve", "U1", "C1")
    deny = block_actions("deny", button_value("r-9", 4, "deny"))
    assert click_of(deny) == Click("r-9", 4, "deny", "U1", "C1")
    body = urlencode({"payload": json.dumps(block_actions())}).encode()
    assert click_of(form_payload(body)) == Click("r-9", 4, "approve", "U1", "C1")


def test_interactions_that_are_not_ours_are_ignored() -> None:
    assert click_of({"type": "view_submission"}) is None
    assert click_of(block_actions(action_id="something_else")) is None
    assert click_of({"type": "block_actions", "actions": []}) is None


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("{not json", r"actions\[0\]\.value is not JSON"),
        ("[1]", "not a JSON object"),
        (button_value("r-9", 4, "deny"), "does not match action_id"),
        (json.dumps({"request_id": "r-9", "version": 0, "decision": "approve"}), "version"),
        (json.dumps({"request_id": "r-9", "version": True, "decision": "approve"}), "version"),
        (json.dumps({"version": 1, "decision": "approve"}), "request_id"),
    ],
)
def test_a_malformed_click_names_the_field(value: str, field: str) -> None:
    with pytest.raises(PayloadError, match=field):
        click_of(block_actions(value=value))


def test_a_click_without_user_or_conversation_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"user\.id"):
        click_of(block_actions(user={}))
    with pytest.raises(PayloadError, match=r"channel\.id"):
        click_of(block_actions(container={}))
    with pytest.raises(PayloadError, match="form"):
        form_payload(b"\xff\xfe")


def test_replays_are_refused_while_valid_and_memory_stays_bounded() -> None:
    guard = ReplayGuard(window=300, capacity=2)
    assert guard.admit("a", 1000.0) == "new"
    assert guard.admit("a", 1300.0) == "replay"
    # A timestamp from 300 s ahead is valid until 600 s from now: remembered so long.
    assert guard.admit("b", 1000.0, stamp=1300.0) == "new"
    assert guard.admit("b", 1599.0) == "replay"
    # Full of keys still valid: fail closed rather than forget one.
    assert guard.admit("c", 1200.0) == "full"
    # "a" stopped being valid after 1300: room again, and "a" is forgotten.
    assert guard.admit("c", 1301.0) == "new"
    assert len(guard) == 2
    with pytest.raises(ValueError, match="capacity"):
        ReplayGuard(capacity=0)
