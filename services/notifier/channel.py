"""The contract between the notifier's delivery loop and each channel (Slack, e-mail, webhook).

A channel gets one rendered message for one recipient and answers with an `Outcome`;
it never retries by itself and never touches the delivery records: the delivery loop
(`services.notifier.deliveries`) owns claiming, retry schedules and the record's state.
What a channel must do on failure is to say which kind it was:

- `delivered`: the receiver accepted it (`ref` is its id: Slack `channel:ts`, the SMTP
  Message-ID, the webhook's HTTP status), so the loop never sends it again;
- `retry`: a transient failure (timeout, 5xx, 429); `retry_after_seconds` when the
  receiver said when (HTTP `Retry-After`), else the loop's growing schedule decides;
- `failed`: permanent for this message (Slack `users_not_found`, SMTP 5xx, HTTP 4xx),
  `reason` says which, a person can replay it after fixing the cause;
- `disabled`: the endpoint asked never to be called again (webhook HTTP 410).

Pure: no I/O here, only the shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

OutcomeKind = Literal["delivered", "retry", "failed", "disabled"]


@dataclass(frozen=True)
class Recipient:
    """Who a message goes to, as the directory knows them.

    `user_id` is the directory id (a webhook endpoint's name for a webhook); `address` is the
    channel's address: a Slack user or channel id, an e-mail address, a webhook URL.
    """

    user_id: str
    address: str
    display_name: str = ""


@dataclass(frozen=True)
class Message:
    """One rendered message, channel-neutral.

    `text` is the plain-text form every channel can show (Slack's notification text,
    the e-mail's text part); `html` the e-mail's HTML part; `blocks` Slack Block Kit
    blocks; `payload` the JSON object a webhook posts. `dedupe_key` identifies the
    intent (the same key for every recipient and channel of one intent) and `kind`
    names it ("threshold_crossed", "anomaly", "request.created", ...).
    """

    dedupe_key: str
    kind: str
    subject: str
    text: str
    html: str = ""
    blocks: tuple[Mapping[str, object], ...] = ()
    payload: Mapping[str, object] = field(default_factory=dict)
    # The credit request a message is about ("" for none): Slack keeps where each copy
    # of it went, so that a decision can edit them.
    request_id: str = ""
    # True: a channel that can edit what it sent (Slack) edits every copy of
    # `request_id`'s message to this one instead of sending; others send it.
    edit: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to (see the module docstring for each kind)."""

    kind: OutcomeKind
    reason: str = ""
    ref: str = ""
    retry_after_seconds: float | None = None


class Channel(Protocol):
    """One way of delivering: `name` is "slack", "email" or "webhook"."""

    name: str

    async def send(self, recipient: Recipient, message: Message, delivery_id: str) -> Outcome:
        """Deliver `message` to `recipient` once; `delivery_id` is stable across retries
        (a webhook's `webhook-id`, an e-mail's Message-ID seed) so receivers can dedupe."""
        ...
