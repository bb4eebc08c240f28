"""What a Slack button click says, and which clicks were seen already (pure).

The notifier's approval messages carry two buttons, action_id "approve" and "deny",
whose `value` is the JSON `{"request_id": "...", "version": N}` (the core's rendering,
services.notifier.render, writes it); the decision is the button's action_id. A
value may also name it (`"decision": "approve"|"deny"`), and then it must agree.
Slack posts a click to the interactivity endpoint as a form body `payload=<JSON>`
(`form_payload`); Socket Mode hands over the same JSON object. `click_of` reads it
into a `Click`, or None for interactions that are not ours to act on (a modal, a
shortcut, another app's button); a payload that claims to be our click but is
malformed raises `PayloadError` naming the field. Every field is bounded as what it
is: Slack ids (user, channel) are 1 to 64 letters, digits, `_` or `-`; the button's
value at most 2,000 characters (Slack's limit); `request_id` an id as every service
stores one (quartermaster.validation: ≤ 256 characters, no NUL); `version` a whole
number from 1 to 2**63 - 1 (the int64 of DecideCreditRequest.version).

`ReplayGuard` remembers what was accepted for as long as its signature could pass
again (its timestamp + Slack's 300 s): the same signed request twice is a replay.
Memory is bounded: at most `capacity` keys; when full, keys no longer valid are
dropped, and if it is still full new requests are refused (fail closed: a flood of
valid requests can't push a recorded one out and then replay it).

Pure: no I/O; times are Unix seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

from quartermaster.validation import MAX_ID_LENGTH, text_problem

Decision = Literal["approve", "deny"]
DECISIONS: tuple[Decision, ...] = ("approve", "deny")
WINDOW_SECONDS = 300
MAX_VERSION = 2**63 - 1
MAX_VALUE_LENGTH = 2000  # Slack's limit on a button's value
_SLACK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class PayloadError(ValueError):
    """A click payload we cannot act on; the message names the field."""


@dataclass(frozen=True)
class Click:
    """One approve/deny click: on which request and version, by which Slack user, in
    which conversation (where the ephemeral answer goes)."""

    request_id: str
    version: int
    decision: Decision
    slack_user_id: str
    channel_id: str


def form_payload(body: bytes) -> dict[str, object]:
    """The JSON object of a `payload=<JSON>` form body; PayloadError when it has none."""
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = json.loads(fields["payload"][0])
    except (ValueError, KeyError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError(f"body is not a form with a JSON payload field ({exc})") from None
    if not isinstance(payload, dict):
        raise PayloadError("payload is not a JSON object")
    return payload


def _text(obj: Mapping[str, object], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}.{key} is missing or not a string")
    return value


def _slack_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _SLACK_ID.fullmatch(value):
        raise PayloadError(f"{where} is missing or not a Slack id (1 to 64 of A-Z a-z 0-9 _ -)")
    return value


def _mapping(obj: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def click_of(payload: Mapping[str, object]) -> Click | None:
    """Our click in a block_actions payload; None when it is not one of ours."""
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], Mapping):
        return None
    action = actions[0]
    action_id = action.get("action_id")
    if action_id not in DECISIONS:
        return None
    user = _slack_id(_mapping(payload, "user").get("id"), "user.id")
    channel = _mapping(payload, "channel").get("id") or _mapping(payload, "container").get(
        "channel_id"
    )
    if not channel:
        raise PayloadError("channel.id is missing (nowhere to answer the clicker)")
    channel = _slack_id(channel, "channel.id")
    raw = _text(action, "value", "actions[0]")
    if len(raw) > MAX_VALUE_LENGTH:
        raise PayloadError(f"actions[0].value is longer than {MAX_VALUE_LENGTH} characters")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise PayloadError("actions[0].value is not JSON") from None
    if not isinstance(value, Mapping):
        raise PayloadError("actions[0].value is not a JSON object")
    if value.get("decision", action_id) != action_id:
        raise PayloadError(
            f"actions[0].value.decision {value.get('decision')!r} does not match"
            f" action_id {action_id!r}"
        )
    decision: Decision = "approve" if action_id == "approve" else "deny"
    version = value.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise PayloadError("actions[0].value.version is not a whole number from 1 to 2**63 - 1")
    request_id = _text(value, "request_id", "actions[0].value")
    if len(request_id) > MAX_ID_LENGTH:
        raise PayloadError(f"actions[0].value.request_id is longer than {MAX_ID_LENGTH} characters")
    problem = text_problem(request_id)
    if problem:
        raise PayloadError(f"actions[0].value.request_id {problem}")
    return Click(request_id, version, decision, user, channel)


class ReplayGuard:
    """Keys (signatures, Socket Mode envelope ids) accepted while their request could
    still be accepted again, at most `capacity` of them (see the module docstring)."""

    def __init__(self, window: float = WINDOW_SECONDS, capacity: int = 10_000) -> None:
        if window <= 0 or capacity < 1:
            raise ValueError("window must be > 0 and capacity ≥ 1")
        self._window = window
        self._capacity = capacity
        self._until: dict[str, float] = {}  # key → when its request stops being valid

    def admit(
        self, key: str, now: float, stamp: float | None = None
    ) -> Literal["new", "replay", "full"]:
        """ "new" (and remembered), "replay" (accepted before and still valid) or "full".

        `stamp` is the request's own timestamp (default `now`): a signed request stays
        valid until `stamp + window`, which may be up to two windows after `now` for a
        timestamp from the future, so it is remembered that long."""
        if key in self._until and self._until[key] >= now:
            return "replay"
        if len(self._until) >= self._capacity:
            # Rare (a full window's worth of clicks): forget what can no longer be valid.
            self._until = {k: t for k, t in self._until.items() if t >= now}
            if len(self._until) >= self._capacity:
                return "full"
        self._until[key] = (now if stamp is None else stamp) + self._window
        return "new"

    def __len__(self) -> int:
        return len(self._until)
