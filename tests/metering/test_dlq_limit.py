"""The DLQ limit per source, without I/O (issue 14, item 10): what a source is, one
episode per noisy source whatever its volume, no effect on anyone else, and memory
bounded however many sources producers invent."""

from __future__ import annotations

import re
import tracemalloc
import uuid

import pytest

from quartermaster.topics import CONTENT_TYPE, PROTOBUF, SOURCE_HEADER, USAGE_BATCH_TYPE
from quartermaster.v1 import usage_pb2
from services.metering.aggregate import Record, Reject
from services.metering.dead_letter import dead_letter
from services.metering.dlq_limit import (
    MAX_SOURCE_CHARS,
    UNKNOWN,
    DlqLimit,
    SourceLimits,
    source_of,
)
from services.metering.state import PartitionState
from tests.helpers import usage
from tests.metering.test_aggregate import NOW, meter, user_in

LIMIT = DlqLimit(window=200, max_ratio=0.5, min_invalid=100, max_sources=50, idle_seconds=600)
T0 = 1_800_000_000.0


def test_a_source_is_the_header_else_the_events_source_field_else_unknown() -> None:
    assert source_of({SOURCE_HEADER: " gateway/eu-1 "}, "sdk/python") == "gateway/eu-1"
    assert source_of({}, "sdk/python") == "sdk/python"
    assert source_of({SOURCE_HEADER: "  "}, "") == UNKNOWN
    assert source_of({SOURCE_HEADER: "x" * 1000}) == "x" * MAX_SOURCE_CHARS


def test_records_are_tallied_per_source_valid_or_not() -> None:
    """Empty records carry only their header; a record that parses but fails validation
    still names its source field; a batch names its first event's."""
    m, u = meter(), user_in(0)
    pb = {CONTENT_TYPE: PROTOBUF}
    batch = usage_pb2.UsageBatch(
        events=[usage(u, occurred_at=NOW, source="sdk/go") for _ in range(2)]
    )
    values: list[tuple[bytes, dict[str, str]]] = [
        (b"", {**pb, SOURCE_HEADER: "x"}),
        (b"", pb),
        (usage(u, occurred_at=NOW, source="gw").SerializeToString(), {**pb, SOURCE_HEADER: "x"}),
        (usage(u, occurred_at=NOW, input_tokens=-1, source="gw").SerializeToString(), pb),
        (usage(u, occurred_at=NOW, source="gw").SerializeToString(), pb),
        (batch.SerializeToString(), {CONTENT_TYPE: f"{PROTOBUF}; type={USAGE_BATCH_TYPE}"}),
    ]  # fmt: skip
    recs = [Record(0, i, u.encode(), v, h) for i, (v, h) in enumerate(values)]
    plan = m.plan(PartitionState(0, 0), recs)
    assert plan.sources == {"x": [1, 1], UNKNOWN: [0, 1], "gw": [1, 1], "sdk/go": [1, 0]}
    assert plan.counted == 4, "the noisy source's good record counts like any other"
    assert sorted(r.source for r in plan.rejects) == ["gw", UNKNOWN, "x"]


def test_a_dlq_copy_names_its_source() -> None:
    _, _, _, headers = dead_letter(Reject(7, b"bob", b"", "empty record value", "noisy"), 0)
    assert (SOURCE_HEADER, b"noisy") in headers


def test_one_noisy_source_opens_one_episode_and_no_other_source_is_touched() -> None:
    """The issue's input: 1,100 empty records from one producer, among good traffic."""
    limits = SourceLimits(LIMIT)
    opened: list[str] = []
    for i in range(110):  # 110 batches of 10 bad records, with good ones from two others
        now = T0 + i
        opened += limits.record({"noisy": (0, 10), "gw": (40, 0), "sdk": (5, 1)}, now)
    assert opened == ["noisy"], "once per episode, not per record or batch"
    assert limits.over() == ["noisy"]
    sdk = limits.get("sdk")
    assert sdk is not None
    assert not sdk.over


def test_a_source_with_few_bad_records_is_not_over_its_limit() -> None:
    limits = SourceLimits(LIMIT)
    assert limits.record({"a": (0, 99)}, T0) == []  # all bad, but fewer than min_invalid
    assert limits.record({"b": (1000, 300)}, T0) == []  # many bad, but a small share


def test_an_episode_ends_when_the_share_falls_and_a_new_one_opens_later() -> None:
    limits = SourceLimits(LIMIT)
    assert limits.record({"gw": (0, 150)}, T0) == ["gw"]
    assert limits.record({"gw": (100, 0)}, T0 + 1) == []  # ~40 % bad: still open
    assert limits.over() == ["gw"]
    assert limits.record({"gw": (400, 0)}, T0 + 2) == []  # mostly good again
    assert limits.over() == []
    assert limits.record({"gw": (0, 300)}, T0 + 3) == ["gw"]  # broken again: told again


def test_an_idle_source_is_forgotten() -> None:
    limits = SourceLimits(LIMIT)
    limits.record({"gone": (0, 150)}, T0)
    limits.record({"busy": (10, 0)}, T0 + 601)
    assert limits.get("gone") is None
    assert limits.over() == []


def test_random_source_ids_do_not_grow_memory_past_max_sources() -> None:
    """A producer inventing a source per record: the least recently seen are forgotten,
    so memory stays flat (tracemalloc, after a warm-up that fills them)."""
    limits = SourceLimits(LIMIT)
    for _ in range(200):
        limits.record({uuid.uuid4().hex: (0, 1)}, T0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5_000):
            limits.record({uuid.uuid4().hex: (0, 1)}, T0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(limits) == LIMIT.max_sources
    # Remembering them all would take ~1.5 MB more (~300 bytes a source); what is left
    # is allocator noise (16 KB when measured).
    assert grown < 100_000, f"{grown} bytes more after 5,000 new sources"


def test_a_wrong_limit_names_every_bad_field() -> None:
    expected = (
        "window: must be at least 1, not 0; max_ratio: must be above 0 and at most 1, "
        "not 1.5; min_invalid: must be at least 1, not 0; max_sources: must be at least 1, "
        "not 0"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        DlqLimit(window=0, max_ratio=1.5, min_invalid=0, max_sources=0)
