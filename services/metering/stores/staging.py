"""A batch's rows handed to PostgreSQL through a temporary staging table.

The counting transaction upserts thousands of totals and rollups a batch. They go by
COPY (binary) into a temporary table of the session, then one `INSERT ... SELECT ...
ON CONFLICT` moves them into place. Passed as `unnest()` arrays instead, they cost
the worker several times the CPU: asyncpg checks every array element against
`collections.abc` in Python before encoding it, where COPY encodes each value with
its codec in C (docs/benchmarks.md).

A staging table is created on a session's first use (`CREATE TEMP TABLE IF NOT
EXISTS`, in the caller's transaction: rolled back with it, and created again by the
next) and emptied at each commit (`ON COMMIT DELETE ROWS`): no catalog rows are made
or dropped per batch, and no rows outlive the transaction that staged them, so a
batch never reads another's.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

# Temporary tables live in the session's own schema; naming it keeps a permanent
# table of the same name elsewhere in the search_path from ever being read instead.
SCHEMA = "pg_temp"


def staging_ddl(table: str, columns: Sequence[tuple[str, str]]) -> str:
    """The statement creating staging table `table` (if the session has none) with
    `columns` ((name, SQL type) pairs, in the order rows give their values)."""
    cols = ", ".join(f"{name} {kind}" for name, kind in columns)
    return f"CREATE TEMP TABLE IF NOT EXISTS {table} ({cols}) ON COMMIT DELETE ROWS"


async def stage(
    conn: asyncpg.Connection, table: str, ddl: str, rows: Sequence[tuple[object, ...]]
) -> None:
    """COPY `rows` into staging table `table` (made by `ddl`, see `staging_ddl`) on
    `conn`, inside the caller's transaction.

    A value no column can take (an int past int64, a string that is not UTF-8) raises
    asyncpg's client-side DataError, as the same value passed as a query argument
    does, so the caller tells it apart as a record's fault (`processor.RECORD_ERRORS`)
    rather than a bug; asyncpg has aborted the COPY, and the transaction is rolled
    back. Anything else propagates as it is."""
    await conn.execute(ddl)
    try:
        await conn.copy_records_to_table(table, records=rows, schema_name=SCHEMA)
    except (OverflowError, UnicodeEncodeError) as exc:
        raise asyncpg_base.DataError(f"invalid input for {table}: {exc}") from exc
