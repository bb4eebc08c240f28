"""The sender's choices for one attempt, without I/O: each channel's retry schedule
(webhooks: the Standard Webhooks steps with Retry-After; Slack: the core's doubling
one), a 410 closing the endpoint, a closed endpoint failing without a send, and what
the metrics observer hears. A fake delivery store (the real one is tested against
PostgreSQL in test_store.py): only the calls the sender makes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from services.notifier import retries
from services.notifier.channel import Message, Outcome, Recipient
from services.notifier.sender import Sender
from services.notifier.stores.deliveries import Delivery

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


@dataclass
class Store:
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    async def delivered(self, delivery_id: int, ref: str) -> bool:
        self.calls.append(("delivered", delivery_id, ref))
        return True

    async def retry(self, delivery_id: int, after_seconds: float, reason: str) -> bool:
        self.calls.append(("retry", delivery_id, after_seconds))
        return True

    async def failed(self, delivery_id: int, reason: str) -> bool:
        self.calls.append(("failed", delivery_id, reason))
        return True


@dataclass
class Answers:
    """A channel answering `outcome`, counting its sends."""

    name: str
    outcome: Outcome
    sent: int = 0

    async def send(self, recipient: Recipient, message: Message, delivery_id: str) -> Outcome:
        self.sent += 1
        return self.outcome


@dataclass
class Gate:
    closed_: dict[str, str] = field(default_factory=dict)

    async def closed(self, channel: str, recipient: str) -> str | None:
        return self.closed_.get(recipient) if channel == "webhook" else None

    async def close(self, channel: str, recipient: str, reason: str) -> None:
        self.closed_[recipient] = reason


@dataclass
class Seen:
    attempts: list[tuple[str, str, float | None]] = field(default_factory=list)

    def attempt(self, channel: str, outcome: str, lag_seconds: float | None) -> None:
        self.attempts.append((channel, outcome, lag_seconds))


def delivery(channel: str, attempts: int, recipient: str = "ops") -> Delivery:
    m = Message("k", "threshold_crossed", "s", "t")
    return Delivery(7, "k", recipient, channel, "https://ops.example/in", "", m, attempts,
                    False, "sending", "", "", NOW - timedelta(seconds=3), NOW, None)  # fmt: skip


def sender(store: Store, channel: Answers, gate: Gate, seen: Seen) -> Sender:
    return Sender(
        store, {channel.name: channel}, batch=1, lease_seconds=30, poll_seconds=1,  # type: ignore[arg-type]
        max_attempts=8, schedules={"webhook": retries.next_delay}, gate=gate, observer=seen,
        clock=lambda: NOW,
    )  # fmt: skip


async def test_webhooks_retry_on_their_schedule_and_slack_on_the_core_one() -> None:
    store, gate, seen = Store(), Gate(), Seen()
    hook = Answers("webhook", Outcome("retry", reason="HTTP 500"))
    for attempts in (1, 2, 3, 8):
        await sender(store, hook, gate, seen)._one(delivery("webhook", attempts))
    limited = Answers("webhook", Outcome("retry", reason="HTTP 429", retry_after_seconds=90))
    await sender(store, limited, gate, seen)._one(delivery("webhook", 2))
    slack = Answers("slack", Outcome("retry", reason="slack chat.postMessage: fatal_error"))
    await sender(store, slack, gate, seen)._one(delivery("slack", 2))
    assert store.calls == [
        ("retry", 7, 5.0), ("retry", 7, 300.0), ("retry", 7, 1800.0),  # 5 s, 5 min, 30 min
        ("failed", 7, "gave up after 8 attempts: HTTP 500"),  # the spec's 8 attempts
        ("retry", 7, 90.0),  # the receiver's Retry-After, not the schedule's 5 min
        ("retry", 7, 10.0),  # Slack: 5 s doubling
    ]  # fmt: skip
    assert {a[:2] for a in seen.attempts} == {("webhook", "retry"), ("slack", "retry")}


async def test_a_410_closes_the_endpoint_and_a_closed_one_is_not_sent_to() -> None:
    store, gate, seen = Store(), Gate(), Seen()
    gone = Answers("webhook", Outcome("disabled", reason="HTTP 410 gone"))
    await sender(store, gone, gate, seen)._one(delivery("webhook", 1))
    assert gate.closed_ == {"ops": "HTTP 410 gone"}
    ok = Answers("webhook", Outcome("delivered", ref="200"))
    await sender(store, ok, gate, seen)._one(delivery("webhook", 1))
    await sender(store, ok, gate, seen)._one(delivery("webhook", 1, recipient="audit"))
    assert ok.sent == 1  # audit only
    assert store.calls == [
        ("failed", 7, "endpoint disabled: HTTP 410 gone"),
        ("failed", 7, "HTTP 410 gone"),  # what the gate said, nothing posted
        ("delivered", 7, "200"),
    ]
    assert seen.attempts == [("webhook", "disabled", None), ("webhook", "failed", None),
                             ("webhook", "delivered", 3.0)]  # fmt: skip


async def test_a_slow_delivery_holds_its_own_slot_only() -> None:
    """Breaker: the sender waited for its whole batch, so one paced Slack send held
    every e-mail claimed with it. Now the other slots go on while it waits."""
    release = asyncio.Event()

    class Claims(Store):
        def __init__(self) -> None:
            super().__init__()
            self.queue = [[replace(delivery("slack", 1, "slow"), id=1),
                           replace(delivery("email", 1, "a"), id=2)],
                          [replace(delivery("email", 1, "b"), id=3)]]  # fmt: skip
            self.serial: list[Collection[str]] = []

        async def claim(self, limit: int, lease: float, serial: Collection[str] = ()) -> list[Any]:
            self.serial.append(serial)
            return self.queue.pop(0) if self.queue else []

    class Channel:
        def __init__(self, name: str) -> None:
            self.name = name

        async def send(self, recipient: Recipient, message: Message, key: str) -> Outcome:
            if recipient.user_id == "slow":
                await release.wait()
            return Outcome("delivered", ref=recipient.user_id)

    store = Claims()
    s = Sender(
        store, {"slack": Channel("slack"), "email": Channel("email")},  # type: ignore[arg-type]
        batch=2, lease_seconds=30, poll_seconds=0.01, max_attempts=8, serial=("slack",),
    )  # fmt: skip
    run = asyncio.create_task(s.run())
    try:
        for _ in range(200):
            if ("delivered", 3, "b") in store.calls:
                break
            await asyncio.sleep(0.01)
        assert ("delivered", 2, "a") in store.calls
        assert ("delivered", 3, "b") in store.calls, "b went while slow still waited"
        assert ("delivered", 1, "slow") not in store.calls
        release.set()
        for _ in range(200):
            if ("delivered", 1, "slow") in store.calls:
                break
            await asyncio.sleep(0.01)
        assert ("delivered", 1, "slow") in store.calls
        assert store.serial[0] == ("slack",)
    finally:
        s.stopping = True
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


@dataclass
class Confirms(Answers):
    """A channel that can be asked whether a delivery was sent, recording since when."""

    since: list[datetime] = field(default_factory=list)

    async def confirm(
        self, recipient: Recipient, message: Message, delivery_id: str, since: datetime
    ) -> Outcome | None:
        self.since.append(since)
        return Outcome("delivered", ref="D1:1.000001")


async def test_an_unsure_delivery_is_looked_up_from_when_it_was_created() -> None:
    store, gate, seen = Store(), Gate(), Seen()
    slack = Confirms("slack", Outcome("delivered", ref="never"))
    unsure = replace(delivery("slack", 2), unsure=True, created_at=NOW - timedelta(hours=3))
    await sender(store, slack, gate, seen)._one(unsure)
    assert (slack.since, slack.sent) == ([NOW - timedelta(hours=3)], 0)
    assert store.calls == [("delivered", 7, "D1:1.000001")]


async def test_slacks_retry_after_is_believed_for_at_most_10_hours() -> None:
    store, gate, seen = Store(), Gate(), Seen()
    slack = Answers("slack", Outcome("retry", reason="ratelimited", retry_after_seconds=1e12))
    await sender(store, slack, gate, seen)._one(delivery("slack", 1))
    assert store.calls == [("retry", 7, 36_000.0)]
