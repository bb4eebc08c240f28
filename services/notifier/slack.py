"""The Slack channel: Block Kit messages through slack_sdk's AsyncWebClient.

- People are found by the directory's Slack id, else by e-mail (users.lookupByEmail,
  cached for the process's life; `users_not_found` fails the delivery naming it).
- A message goes to the person's direct-message channel (conversations.open, cached),
  chat.postMessage paced per channel (`pace_seconds` apart, Slack's ~1/s per channel);
  a 429 whose Retry-After is at most IN_CALL_WAIT_MAX seconds is waited out inside the
  call (`_ShortRateLimitHandler`); a longer or unreadable one, or 429s that outlast
  those retries, come back as `retry` with the Retry-After, which the loop's schedule
  bounds (services.notifier.retries.bounded_retry_after: at most 10 h).
- The notification `text` is escaped for mrkdwn and kept within Slack's length
  (services.notifier.blocks.message_text); the blocks come escaped from the rendering.
- Each message carries its delivery id in Slack message metadata
  (`event_type` "qm_delivery"), so `confirm` can tell, after a sender died between
  Slack's answer and recording it, whether the message is there already: it reads the
  conversation's history (conversations.history with include_all_metadata) from the
  delivery's creation (minus CLOCK_MARGIN) to now, page by page with the cursor, until
  it finds the message or has read them all: exactly one message, however many others
  arrived since.
- A message about a request records where each copy went (`SlackCopies`); a message
  with `edit` set rewrites every copy with chat.update instead (who decided, when;
  buttons gone). Editing is idempotent, so a repeated edit changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from quartermaster.db import RETRIED_NEXT_ROUND, outage_text
from services.notifier.blocks import message_text
from services.notifier.channel import Message, Outcome, Recipient
from services.notifier.retries import parse_retry_after
from services.notifier.stores.people import SlackCopy

log = logging.getLogger("qm.notifier.slack")
EVENT_TYPE = "qm_delivery"
# Slack errors that no retry will mend: the delivery fails naming it.
PERMANENT = frozenset({
    "users_not_found", "user_not_found", "channel_not_found", "cannot_dm_bot",
    "is_archived", "invalid_blocks", "msg_too_long", "no_text", "user_disabled",
})  # fmt: skip
# `confirm` reads history this many messages a page (Slack advises at most 200) ...
HISTORY_PAGE = 200
# ... from the delivery's creation less this (our database's clock and Slack's may differ) ...
CLOCK_MARGIN = timedelta(minutes=10)
# ... and gives up (retry, never a duplicate) after this many pages.
HISTORY_MAX_PAGES = 500
# A 429 asking for at most this many seconds is waited out inside the call; a longer
# one is handed to the loop's schedule, so a send never holds its slot for hours.
IN_CALL_WAIT_MAX = 30.0


class Copies(Protocol):
    async def save(self, request_id: str, copy: SlackCopy) -> None: ...
    async def of(self, request_id: str) -> list[SlackCopy]: ...


def client(token: str, base_url: str = "", retries: int = 3) -> AsyncWebClient:
    """An AsyncWebClient for `token` at `base_url` (empty: Slack's own) that waits out
    429s (Retry-After) up to `retries` times per call, over one aiohttp session
    (without one the SDK opens a session, and a connection, per call). Call it from a
    running event loop; close `client.session` when done."""
    kwargs: dict[str, Any] = {"token": token, "session": aiohttp.ClientSession()}
    if base_url:
        kwargs["base_url"] = base_url if base_url.endswith("/") else base_url + "/"
    handler = _ShortRateLimitHandler(max_retry_count=retries)
    return AsyncWebClient(retry_handlers=[handler], **kwargs)


def _retry_after(headers: Any) -> float | None:
    """Seconds a response's Retry-After asks for (any case, a list or a string), or None."""
    for key, value in dict(headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) and value else value
            return parse_retry_after(str(raw), datetime.now(UTC))
    return None


class _ShortRateLimitHandler(AsyncRateLimitErrorRetryHandler):
    """The SDK's 429 handler for Retry-Afters of at most IN_CALL_WAIT_MAX seconds only
    (the SDK's own sleeps whatever the header says, and fails on a non-integer one)."""

    async def _can_retry_async(
        self, *, state: RetryState, request: HttpRequest,
        response: HttpResponse | None = None, error: Exception | None = None,
    ) -> bool:  # fmt: skip
        if response is None or response.status_code != 429:
            return False
        after = _retry_after(response.headers)
        return after is not None and after <= IN_CALL_WAIT_MAX

    async def prepare_for_next_attempt_async(
        self, *, state: RetryState, request: HttpRequest,
        response: HttpResponse | None = None, error: Exception | None = None,
    ) -> None:  # fmt: skip
        after = _retry_after(response.headers if response is not None else {})
        state.next_attempt_requested = True
        await asyncio.sleep(min(after if after is not None else 1.0, IN_CALL_WAIT_MAX))
        state.increment_current_attempt()


class _Pace:
    """Per Slack channel: calls at least `gap` seconds apart, in arrival order."""

    def __init__(self, gap: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._gap = gap
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}

    async def run(self, channel: str, call: Callable[[], Awaitable[Any]]) -> Any:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            wait = self._last.get(channel, -1e18) + self._gap - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                return await call()
            finally:
                self._last[channel] = self._clock()


def _outcome(exc: Exception, what: str) -> Outcome:
    if isinstance(exc, SlackApiError):
        error = str(exc.response.get("error", "unknown"))
        if error in PERMANENT:
            return Outcome("failed", reason=f"slack {what}: {error}")
        after = _retry_after(exc.response.headers) if exc.response.status_code == 429 else None
        return Outcome("retry", reason=f"slack {what}: {error}", retry_after_seconds=after)
    return Outcome("retry", reason=f"slack {what}: {type(exc).__name__}: {exc}")


def _find(messages: list[dict[str, Any]], delivery_id: str) -> str | None:
    """The ts of the message carrying `delivery_id` in its metadata, or None."""
    for m in messages:
        meta = m.get("metadata") or {}
        if meta.get("event_payload", {}).get("delivery_id") == delivery_id:
            return str(m["ts"])
    return None


class SlackChannel:
    """Channel "slack" (see the module docstring). Transient failures (network,
    5xx, 429 beyond the SDK's retries, any other Slack error) are `retry`; errors in
    PERMANENT are `failed`."""

    name = "slack"

    def __init__(self, web: AsyncWebClient, copies: Copies, pace_seconds: float = 1.0) -> None:
        self.web = web
        self._copies = copies
        self._pace = _Pace(pace_seconds)
        self._by_email: dict[str, str] = {}
        self._dm: dict[str, str] = {}
        self.posted = 0

    async def _user(self, address: str) -> str:
        if "@" not in address:
            return address
        found = self._by_email.get(address.lower())
        if found is None:
            resp = await self.web.users_lookupByEmail(email=address)
            found = str(resp["user"]["id"])
            self._by_email[address.lower()] = found
        return found

    async def _channel(self, address: str) -> str:
        user = await self._user(address)
        found = self._dm.get(user)
        if found is None:
            resp = await self.web.conversations_open(users=user)
            found = str(resp["channel"]["id"])
            self._dm[user] = found
        return found

    async def send(self, recipient: Recipient, message: Message, delivery_id: str) -> Outcome:
        """Post `message` to the recipient's DM (or, with `edit`, rewrite the request's
        copies); see the class docstring for the outcomes."""
        if message.edit:
            return await self._edit(message)
        if not recipient.address:
            return Outcome("failed", reason=f"no Slack id or e-mail known for {recipient.user_id}")
        step = "users.lookupByEmail / conversations.open"
        try:
            channel = await self._channel(recipient.address)
            step = "chat.postMessage"
            blocks = [dict(b) for b in message.blocks] or None
            resp = await self._pace.run(channel, lambda: self.web.chat_postMessage(
                channel=channel, text=message_text(message.text), blocks=blocks,
                metadata={"event_type": EVENT_TYPE,
                          "event_payload": {"delivery_id": delivery_id}},
            ))  # fmt: skip
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            return _outcome(exc, step)
        self.posted += 1
        ts = str(resp["ts"])
        where = str(resp.get("channel") or channel)
        await self._keep_copy(recipient, message, where, ts)
        return Outcome("delivered", ref=f"{where}:{ts}")

    async def _keep_copy(self, recipient: Recipient, message: Message, channel: str,
                         ts: str) -> None:  # fmt: skip
        """Record where a request's message went, for the edit after its decision. A
        PostgreSQL that can't take it now (an outage) leaves the message as it is,
        buttons and all (a click on them is refused: the request's version moved on):
        it is delivered, and sending it again, as a raised error did, posts it twice."""
        if not message.request_id:
            return
        try:
            await self._copies.save(message.request_id, SlackCopy(recipient.user_id, channel, ts))
        except RETRIED_NEXT_ROUND as exc:
            log.warning("slack: the copy of request %s's message in %s was not recorded, so it "
                        "will not be edited after the decision: %s",
                        message.request_id, channel, outage_text(exc))  # fmt: skip

    async def confirm(
        self, recipient: Recipient, message: Message, delivery_id: str, since: datetime
    ) -> Outcome | None:
        """For a delivery created at `since` (aware) whose earlier attempt has no
        recorded outcome: `delivered` when its message is in the recipient's channel
        already (its copy recorded again), None when it is not (send it), `retry`
        when Slack can't be asked now or the history is too long to read through."""
        if message.edit or not recipient.address:
            return None
        oldest = f"{(since - CLOCK_MARGIN).timestamp():.6f}"
        cursor = ""
        try:
            channel = await self._channel(recipient.address)
            for _page in range(HISTORY_MAX_PAGES):
                resp = await self.web.conversations_history(
                    channel=channel, include_all_metadata=True, limit=HISTORY_PAGE,
                    oldest=oldest, cursor=cursor or None)  # fmt: skip
                ts = _find(resp.get("messages", []), delivery_id)
                if ts is not None:
                    return await self._confirmed(recipient, message, channel, ts)
                cursor = (resp.get("response_metadata") or {}).get("next_cursor") or ""
                if not resp.get("has_more") or not cursor:
                    return None
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            return _outcome(exc, "conversations.history")
        return Outcome("retry", reason=f"slack conversations.history: more than"
                       f" {HISTORY_MAX_PAGES * HISTORY_PAGE} messages since {oldest}")  # fmt: skip

    async def _confirmed(
        self, recipient: Recipient, message: Message, channel: str, ts: str
    ) -> Outcome:
        await self._keep_copy(recipient, message, channel, ts)
        return Outcome("delivered", ref=f"{channel}:{ts}")

    async def _edit(self, message: Message) -> Outcome:
        copies = await self._copies.of(message.request_id)
        edited = 0
        for c in copies:
            try:
                await self._pace.run(c.channel, lambda c=c: self.web.chat_update(  # type: ignore[misc]
                    channel=c.channel, ts=c.ts, text=message_text(message.text),
                    blocks=[dict(b) for b in message.blocks]))  # fmt: skip
                edited += 1
            except SlackApiError as exc:
                if exc.response.get("error") == "message_not_found":
                    log.info("copy %s:%s of request %s is gone; not edited", c.channel, c.ts,
                             message.request_id)  # fmt: skip
                    continue
                return _outcome(exc, "chat.update")
            except (aiohttp.ClientError, TimeoutError) as exc:
                return _outcome(exc, "chat.update")
        return Outcome("delivered", ref=f"{edited} of {len(copies)} copies edited")
