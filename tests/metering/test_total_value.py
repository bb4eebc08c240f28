"""The totals metering publishes, built in parts (`total_value`), read back as the
whole message (`total_message`) for every kind of total."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quartermaster.v1.usage_pb2 import UsageTotal
from quartermaster.wire import timestamp
from services.metering.mapping import total_message, total_value, updated_at_part
from services.metering.state import Total

DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
NOW = timestamp(datetime(2026, 12, 1, 10, 15, 3, 123456, tzinfo=UTC))

CASES = [
    (("ann", "month", "2026-12"), Total("acme", DEC, JAN, 1_234_567_890, 17, 0), None),
    (("ann", "day", "2026-12-01"), Total("acme", DEC, DEC.replace(day=2), 0, 0, 0), None),
    (("bob", "week", "2026-W49"), Total("", DEC, DEC.replace(day=8), 499_999, 1, 1), []),
    (
        ("zoë@example.com", "month", "2026-12"),
        Total("ws-2", DEC, JAN, 10**24, 10**9, 3),
        ["req-1", "req-2"],
    ),
    (("u", "month", "2026-12"), Total("acme", DEC, JAN, 1, 1, 0), ["r" * 256] * 256),
]


@pytest.mark.parametrize(("key", "total", "settled"), CASES)
def test_a_total_built_in_parts_reads_as_the_whole_message(
    key: tuple[str, str, str], total: Total, settled: list[str] | None
) -> None:
    got = UsageTotal.FromString(total_value(key, total, updated_at_part(NOW), settled))
    assert got == total_message(key, total, NOW, settled)
    assert got.subject_id == key[0]
    assert got.used_micros == total.used_micros


def test_users_of_one_period_share_its_part_and_keep_their_own_fields() -> None:
    now = updated_at_part(NOW)
    a = UsageTotal.FromString(total_value(("a", "month", "2026-12"), CASES[0][1], now))
    b = UsageTotal.FromString(total_value(("b", "month", "2026-12"), CASES[3][1], now))
    assert (a.subject_id, a.workspace_id, a.event_count) == ("a", "acme", 17)
    assert (b.subject_id, b.workspace_id, b.event_count) == ("b", "ws-2", 10**9)
    assert a.period_start == b.period_start
