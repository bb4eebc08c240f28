"""The decision whether metering may count on its stored offsets (issue 14, item 1):
pure, so each case is one call."""

from __future__ import annotations

from services.metering.topic_check import (
    ACCEPT_COMMAND,
    CREATE_COMMAND,
    LogRange,
    Observed,
    Stored,
    TopicMark,
    TopicRefused,
    problems,
)

USAGE, TOTALS = "qm.usage.v1", "qm.usage.totals.v1"
OLD, NEW = TopicMark("old-id", 3), TopicMark("new-id", 3)
TOTALS_MARK = TopicMark("totals-id", 3)


def _observed(
    usage: TopicMark | None = OLD,
    ends: tuple[int, ...] = (100, 100, 100),
    totals: TopicMark | None = TOTALS_MARK,
    cleanup: str | None = "compact",
) -> Observed:
    return Observed(usage, {p: LogRange(0, e) for p, e in enumerate(ends)}, totals, cleanup)


def _check(stored: Stored, observed: Observed) -> list[str]:
    return problems(stored, observed, USAGE, TOTALS, partitions=3)


def test_the_same_topics_with_offsets_within_their_logs_may_be_counted() -> None:
    stored = Stored(OLD, TOTALS_MARK, {0: 100, 1: 40, 2: 0})
    assert _check(stored, _observed()) == []


def test_a_first_start_with_nothing_stored_may_be_counted() -> None:
    assert _check(Stored(None, None, {}), _observed()) == []


def test_a_missing_usage_topic_is_refused_even_with_nothing_stored() -> None:
    # Metering creates no topic: faust would have, with the broker's defaults.
    found = _check(Stored(None, None, {}), _observed(usage=None))
    assert found == [
        "qm.usage.v1 does not exist on the broker: create the topics (see "
        "docs/operations.md, Topics)."
    ]
    text = str(TopicRefused(USAGE, found))
    assert CREATE_COMMAND in text
    assert "Metering creates no topic" in text
    assert ACCEPT_COMMAND not in text, "nothing to accept before the topics exist"


def test_a_recreated_topic_is_told_by_its_id_even_when_its_log_is_longer() -> None:
    # Refilled past the stored offsets before the worker looked: offsets alone pass.
    found = _check(Stored(OLD, TOTALS_MARK, {0: 5}), _observed(usage=NEW))
    assert len(found) == 1
    assert "qm.usage.v1 was recreated: its topic id is new-id" in found[0]


def test_a_log_ending_below_the_stored_offset_is_named_per_partition() -> None:
    found = _check(Stored(OLD, TOTALS_MARK, {0: 19_741, 1: 3}), _observed(ends=(0, 3, 0)))
    assert found == [
        "qm.usage.v1's log ends below the stored offsets (partition 0 stored 19741 > end 0)."
    ]


def test_a_broker_without_topic_ids_is_still_told_by_partitions_and_offsets() -> None:
    stored = Stored(TopicMark("", 3), TOTALS_MARK, {0: 10})
    found = _check(stored, _observed(usage=TopicMark("", 4), ends=(0, 0, 0, 0)))
    assert any("has 4 partitions; the stored offsets were counted on 3" in p for p in found)
    assert any("QM_TOPIC_PARTITIONS is 3" in p for p in found)
    assert any("partition 0 stored 10 > end 0" in p for p in found)


def test_a_missing_usage_topic_with_stored_offsets_is_refused() -> None:
    found = _check(Stored(OLD, TOTALS_MARK, {0: 7, 1: 9}), _observed(usage=None))
    assert found == [
        "qm.usage.v1 does not exist on the broker, but offsets up to 9 are stored for it: "
        "create the topics (see docs/operations.md, Topics)."
    ]


def test_the_totals_topic_must_exist_be_compacted_and_be_the_same() -> None:
    stored = Stored(OLD, TOTALS_MARK, {})
    assert "qm.usage.totals.v1 does not exist" in _check(stored, _observed(totals=None))[0]
    auto = _check(stored, _observed(cleanup="delete"))
    assert auto[0].startswith("qm.usage.totals.v1 is not compacted (cleanup.policy=delete)")
    assert _check(stored, _observed(cleanup="compact,delete")) == []
    recreated = _check(stored, _observed(totals=TopicMark("other", 3)))
    assert "the totals policy reads are gone" in recreated[0]


def test_the_refusal_says_what_happened_and_the_command_that_fixes_it() -> None:
    text = str(TopicRefused(USAGE, ["qm.usage.v1 was recreated."]))
    assert text.startswith("metering refuses to count qm.usage.v1: qm.usage.v1 was recreated.")
    assert "would skip new events as already counted" in text
    assert ACCEPT_COMMAND in text
    assert ACCEPT_COMMAND.startswith("python -m services.metering.cli topic accept")
