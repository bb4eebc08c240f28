"""A batch rewrites the totals of the users it counted: PostgreSQL updates them in
place (heap-only tuples, no new primary-key entry), which needs room on their page
(metering.totals' fillfactor, migration 20261201002000). Packed full, every rewrite
moved the row and added an index entry: the totals write of one-event records took
16-25 % longer (docs/benchmarks.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from services.metering.state import Total, TotalKey
from services.metering.stores.counting import _write_totals
from tests.conftest import database_of_its_own

pytestmark = pytest.mark.infra

USERS = 2_000  # three totals each: ~45 pages of rows, so most sit on full pages
START = datetime(2026, 12, 1, tzinfo=UTC)


def totals(picos: int) -> dict[TotalKey, Total]:
    out: dict[TotalKey, Total] = {}
    for i in range(USERS):
        for kind, key, days in (("day", "2026-12-01", 1), ("week", "2026-W49", 7),
                                ("month", "2026-12", 31)):  # fmt: skip
            out[(f"user-{i}", kind, key)] = Total("ws", START, START + timedelta(days), picos, 1, 0)
    return out


async def test_a_batch_rewrites_every_total_in_place(infra: Infra) -> None:
    async with database_of_its_own(infra) as url:
        for batch in range(1, 4):  # three batches of the same users' totals
            # a connection each: a backend's transaction counters include what it has
            # not yet reported of its earlier transactions
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    await _write_totals(conn, 0, totals(batch * 1_000_000), datetime.now(UTC))
                    updated, hot = await conn.fetchrow(
                        "SELECT pg_stat_get_xact_tuples_updated(c.oid),"
                        " pg_stat_get_xact_tuples_hot_updated(c.oid)"
                        " FROM pg_class c WHERE c.oid = 'metering.totals'::regclass"
                    )
                options = await conn.fetchval(
                    "SELECT reloptions FROM pg_class WHERE oid = 'metering.totals'::regclass"
                )
                micros = await conn.fetchval("SELECT sum(used_micros) FROM metering.totals")
            finally:
                await conn.close()
            assert options == ["fillfactor=50"]
            assert micros == batch * 3 * USERS
            assert updated == (0 if batch == 1 else 3 * USERS)
            assert hot == updated, f"batch {batch}: {hot} of {updated} rewritten in place"
