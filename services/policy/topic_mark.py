"""Is the totals topic on the broker the incarnation policy last served from?

Policy answers from the totals it reads from `qm.usage.totals.v1`. A broker that lost
its data creates the topic again, empty and maybe with another partition count: a
replica started against it would read nothing and answer every user from zero. So the
incarnation served from (Kafka's topic id and the partition count) is recorded in
policy's schema, and a start against another one is not ready until an operator
accepts it (`ACCEPT_COMMAND`), once the totals are back on it. Pure: the broker and
Postgres are read by the caller (wiring).
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT_COMMAND = "python -m services.policy topic accept --by NAME --reason TEXT"


@dataclass(frozen=True)
class TopicMark:
    """One incarnation of a topic: Kafka's topic id (base64 of the UUID; '' when the
    broker gives none) and its partition count."""

    topic_id: str
    partitions: int

    def __str__(self) -> str:
        return f"topic id {self.topic_id or '(none)'}, {self.partitions} partitions"


def mismatch(topic: str, stored: TopicMark | None, now: TopicMark) -> str | None:
    """Why `now` (on the broker) is not the incarnation `stored` (None: nothing
    recorded yet, so any is fine), with what to do; None when it is the same. Topic
    ids are compared only when both are known."""
    if stored is None:
        return None
    ids_differ = bool(stored.topic_id and now.topic_id and stored.topic_id != now.topic_id)
    if not ids_differ and stored.partitions == now.partitions:
        return None
    return (
        f"{topic} is not the topic this workspace's policy last served from ({now}; was"
        f" {stored}): the broker lost it, or it was created again, and its totals may be"
        " missing, so answering from it could start users at zero. What to do: bring"
        " every total back on it (metering's `topic accept` republishes the open totals),"
        f" then accept it: `{ACCEPT_COMMAND}`"
    )
