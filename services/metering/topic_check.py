"""Is the usage topic on the broker still the one metering's stored offsets count?

Metering stores, per partition of `qm.usage.v1`, the next offset to count (with the
totals it produced) and skips every record below it as counted before. That is only
right while the topic is the same one. A broker that lost its data (the local broker
keeps everything in memory; a real cluster after a disaster) recreates the topic
empty, maybe with another partition count: every new record then sits below the
stored offset and would be skipped as already counted, silently. This module decides,
from what is stored and what the broker reports, whether counting may go on, and
words the refusal for the operator. Pure: the broker and Postgres are read by the
caller (`topic_guard`).

What tells a recreated topic apart (`TopicMark`): the topic id Kafka gives every topic
(KIP-516; an empty string where the broker gives none) and the partition count. A
truncated topic (same id, its log end now below the stored offset) is told by the
offsets. The totals topic must be compacted: policy reads it from the beginning, and a
topic that deletes old records (the broker's default for an auto-created topic) loses
totals that policy then counts as zero.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT_COMMAND = "python -m services.metering.cli topic accept --by NAME --reason TEXT"
CREATE_COMMAND = "python -m quartermaster.kafka ensure-topics --partitions N"
# How a missing topic's problem ends: `TopicRefused` tells such a refusal by it.
_CREATE_THEM = "create the topics (see docs/operations.md, Topics)."


@dataclass(frozen=True)
class TopicMark:
    """What identifies one incarnation of a topic: Kafka's topic id (base64 of the
    UUID, '' when the broker gives none) and its partition count."""

    topic_id: str
    partitions: int


@dataclass(frozen=True)
class LogRange:
    """A partition's log on the broker: its first offset and its end (the offset the
    next record will get), both as the broker reports them, confirmed (`topic_guard`
    probes a record where the broker's reported end is known to be low)."""

    start: int
    end: int


@dataclass(frozen=True)
class Observed:
    """What the broker holds now. `usage` is None when the usage topic does not exist;
    `totals_cleanup` is the totals topic's cleanup.policy (None: no such topic)."""

    usage: TopicMark | None
    logs: dict[int, LogRange]
    totals: TopicMark | None
    totals_cleanup: str | None


@dataclass(frozen=True)
class Stored:
    """What Postgres holds: the marks recorded when counting began or an operator
    accepted a topic (None: none recorded yet), and the next offset per partition."""

    usage: TopicMark | None
    totals: TopicMark | None
    offsets: dict[int, int]


class TopicRefused(Exception):
    """Counting must not go on: `problems` (each one sentence) and what to do, in
    `str()`. Raised by `topic_guard`; ends the worker with EXIT_REFUSED."""

    def __init__(self, topic: str, problems: list[str]) -> None:
        self.topic = topic
        self.problems = problems
        super().__init__(refusal_message(topic, problems))


def refusal_message(topic: str, problems: list[str]) -> str:
    """The ERROR line an operator reads: what is wrong, why counting stops, what to do.
    A missing topic is created first (accepting needs the topics there); once it is,
    a restarted worker says what else is wrong, if anything."""
    if any(p.endswith(_CREATE_THEM) for p in problems):
        return (
            f"metering refuses to count {topic}: {' '.join(problems)} Metering creates no "
            "topic (one a client makes the broker create gets the broker's defaults: its "
            f"partition count, no compaction): run `{CREATE_COMMAND}` (make run and the "
            "Helm chart's topics Job do), then restart metering."
        )
    return (
        f"metering refuses to count {topic}: {' '.join(problems)} Counting on would skip "
        "new events as already counted (or count users on the wrong partition), so nothing "
        "is counted and nothing is acked. If the broker lost its data (a restarted local "
        "broker keeps nothing) and the topics as they are now are the ones to count, run "
        f"`{ACCEPT_COMMAND}` (it starts the stored offsets at each partition's first "
        "record, records who and why, and publishes the open periods' totals again), "
        "then restart metering. If the old data should still be there, restore the "
        "broker instead and restart metering."
    )


def problems(
    stored: Stored, observed: Observed, usage_topic: str, totals_topic: str, partitions: int
) -> list[str]:
    """Every reason counting must stop (empty: go on). `partitions` is the count
    metering places users by (QM_TOPIC_PARTITIONS)."""
    out: list[str] = []
    now = observed.usage
    if now is None:
        stored_part = (
            f", but offsets up to {max(stored.offsets.values())} are stored for it"
            if stored.offsets
            else ""
        )
        out.append(f"{usage_topic} does not exist on the broker{stored_part}: {_CREATE_THEM}")
    else:
        out.extend(_usage_problems(stored, observed, now, usage_topic, partitions))
    out.extend(_totals_problems(stored, observed, totals_topic))
    return out


def _usage_problems(
    stored: Stored, observed: Observed, now: TopicMark, topic: str, partitions: int
) -> list[str]:
    out: list[str] = []
    before = stored.usage
    if before is not None and before.topic_id and now.topic_id and before.topic_id != now.topic_id:
        out.append(
            f"{topic} was recreated: its topic id is {now.topic_id}, the stored offsets "
            f"belong to {before.topic_id}."
        )
    if before is not None and before.partitions != now.partitions:
        out.append(
            f"{topic} has {now.partitions} partitions; the stored offsets were counted "
            f"on {before.partitions}."
        )
    if now.partitions != partitions:
        out.append(
            f"{topic} has {now.partitions} partitions but QM_TOPIC_PARTITIONS is "
            f"{partitions}: users would be looked for on the wrong partitions."
        )
    behind = {
        p: (offset, observed.logs[p].end)
        for p, offset in sorted(stored.offsets.items())
        if p in observed.logs and offset > observed.logs[p].end
    }
    if behind:
        shown = ", ".join(f"partition {p} stored {s} > end {e}" for p, (s, e) in behind.items())
        out.append(f"{topic}'s log ends below the stored offsets ({shown}).")
    return out


def _totals_problems(stored: Stored, observed: Observed, topic: str) -> list[str]:
    if observed.totals is None or observed.totals_cleanup is None:
        return [f"{topic} does not exist: {_CREATE_THEM}"]
    out: list[str] = []
    if "compact" not in observed.totals_cleanup.split(","):
        out.append(
            f"{topic} is not compacted (cleanup.policy={observed.totals_cleanup}): it was "
            "probably auto-created by the broker; policy would lose totals to retention."
        )
    before, now = stored.totals, observed.totals
    if before is not None and (
        (before.topic_id and now.topic_id and before.topic_id != now.topic_id)
        or before.partitions != now.partitions
    ):
        out.append(
            f"{topic} was recreated (topic id {now.topic_id}, {now.partitions} partitions; "
            f"was {before.topic_id}, {before.partitions}): the totals policy reads are gone."
        )
    return out
