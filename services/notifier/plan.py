"""From one intent or request event to the deliveries it owes: who (audience), by
which channels (their preference, else the workspace default), saying what (render),
or into whose daily digest. Pure: the directory's people and the preferences come in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from services.notifier.audience import (
    Addressee,
    Intent,
    Person,
    RequestFact,
    Role,
    intent_audience,
    request_audience,
    to_update,
)
from services.notifier.channel import Message
from services.notifier.render import (
    Style,
    render_ask,
    render_decided,
    render_edit,
    render_event,
    render_intent,
)
from services.notifier.schedule import Queued, digests

SLACK, EMAIL, WEBHOOK = "slack", "email", "webhook"
# The recipient of the one delivery that edits every approver's Slack copy of a request.
APPROVERS_COPIES = "*approvers*"


@dataclass(frozen=True)
class Preference:
    """How a person is told: `channels` ("slack", "email"); `digest`: news of other
    people's spend waits for a daily digest instead of one message each."""

    channels: tuple[str, ...]
    digest: bool = False


def preference_of(word: str) -> Preference:
    """ "slack", "email" or "both" as a Preference; ValueError otherwise."""
    channels = {"slack": (SLACK,), "email": (EMAIL,), "both": (SLACK, EMAIL)}.get(word)
    if channels is None:
        raise ValueError(f"channel preference {word!r}: expected slack, email or both")
    return Preference(channels)


CHOICES = ("slack", "email", "both", "digest")


def chosen(word: str, digest: bool, default: Preference) -> Preference:
    """A person's choice as a Preference: slack, email or both (news of other people's
    spend in a daily digest when `digest`), or "digest": the channels of `default`,
    digest on. ValueError naming the word otherwise."""
    if word == "digest":
        return Preference(default.channels, digest=True)
    if word not in CHOICES:
        raise ValueError(f"channel preference {word!r}: expected one of {', '.join(CHOICES)}")
    return Preference(preference_of(word).channels, digest=digest)


def describe(preference: Preference) -> str:
    """ "slack", "email", "both", with " + digest" when it digests."""
    words = {(SLACK,): "slack", (EMAIL,): "email", (SLACK, EMAIL): "both"}
    word = words.get(preference.channels, "+".join(preference.channels))
    return word + (" + digest" if preference.digest else "")


@dataclass(frozen=True)
class Planned:
    """One delivery owed: unique per (dedupe_key, recipient, channel). `address` is
    the channel's (a Slack user id, else an e-mail Slack can look up; an e-mail
    address; "" when the directory knows none, which the channel fails naming it)."""

    dedupe_key: str
    recipient: str
    channel: str
    address: str
    display_name: str
    message: Message
    intent_at: datetime


@dataclass(frozen=True)
class Plan:
    deliveries: list[Planned]
    digest: list[Queued]


@dataclass(frozen=True)
class Audience:
    """What planning needs to know of people: the directory's entries (absent: not
    known there), preferences (absent: `default`), the channels this replica has, and
    the webhook endpoints (name → URL) that hear of every notice (disabled ones left
    out)."""

    people: Mapping[str, Person]
    preferences: Mapping[str, Preference]
    default: Preference
    available: Collection[str]
    webhooks: Mapping[str, str] = field(default_factory=dict)

    def address(self, user_id: str, channel: str) -> str:
        p = self.people.get(user_id)
        if p is None:
            return ""
        if channel == SLACK:
            return p.slack_user_id or p.email
        return p.email

    def name(self, user_id: str) -> str:
        p = self.people.get(user_id)
        return p.name if p is not None else user_id

    def channels(self, user_id: str) -> tuple[str, ...]:
        pref = self.preferences.get(user_id, self.default)
        return tuple(c for c in pref.channels if c in self.available)

    def digests(self, to: Addressee) -> bool:
        pref = self.preferences.get(to.user_id, self.default)
        return pref.digest and to.role is Role.MANAGER


def _fan_out(to: Addressee, message: Message, at: datetime, who: Audience) -> list[Planned]:
    return [
        Planned(
            message.dedupe_key,
            to.user_id,
            c,
            who.address(to.user_id, c),
            who.name(to.user_id),
            message,
            at,
        )
        for c in who.channels(to.user_id)
    ]


def _hooks(message: Message, at: datetime, who: Audience) -> list[Planned]:
    """One delivery per webhook endpoint, addressed by its name."""
    return [Planned(message.dedupe_key, name, WEBHOOK, url, name, message, at)
            for name, url in sorted(who.webhooks.items())]  # fmt: skip


def plan_intent(intent: Intent, who: Audience, style: Style) -> Plan:
    """The deliveries (and digest entries) of a threshold or anomaly intent."""
    person = who.people.get(intent.recipient_user_id)
    subject = intent.data.get("subject", "")
    about = subject.partition(":")[2] if subject.startswith("pool:") else who.name(
        intent.recipient_user_id)  # fmt: skip
    out: list[Planned] = []
    digest: list[Queued] = []
    for to in intent_audience(intent, person):
        message = render_intent(intent, to, about, style)
        if who.digests(to):
            line = message.text.split("\n", 1)[-1].replace("\n", " ")
            digest.append(Queued(to.user_id, intent.dedupe_key, intent.kind.value,
                                 message.subject, line))  # fmt: skip
        else:
            out += _fan_out(to, message, intent.created_at, who)
    if who.webhooks:
        # The intent once per endpoint, as its recipient reads it.
        first = intent_audience(intent, person)[0]
        hook = render_intent(intent, first, about, style)
        out += _hooks(hook, intent.created_at, who)
    return Plan(out, digest)


def plan_request(fact: RequestFact, who: Audience, style: Style) -> Plan:
    """The deliveries of a request event: approvers asked, the requester told, and
    (after a decision) one edit of every approver's Slack copy."""
    requester = who.name(fact.requester)
    actor = who.name(fact.actor) if fact.actor else "system"
    out: list[Planned] = []
    for to in request_audience(fact):
        if to.role is Role.APPROVER:
            message = render_ask(fact, to, requester, style)
        else:
            message = render_decided(fact, actor, style)
        out += _fan_out(to, message, fact.occurred_at, who)
    if to_update(fact) and SLACK in who.available:
        edit = render_edit(fact, requester, actor, style)
        out.append(Planned(edit.dedupe_key, APPROVERS_COPIES, SLACK, "", "", edit,
                           fact.occurred_at))  # fmt: skip
    if who.webhooks:
        out += _hooks(render_event(fact, requester, actor, style), fact.occurred_at, who)
    return Plan(out, [])


def plan_digest(waiting: list[Queued], day: date, who: Audience, at: datetime) -> Plan:
    """One digest delivery per person (and channel) of the facts waiting for them."""
    out: list[Planned] = []
    for user, message in sorted(digests(waiting, day).items()):
        out += _fan_out(Addressee(user, Role.MANAGER), message, at, who)
    return Plan(out, [])
