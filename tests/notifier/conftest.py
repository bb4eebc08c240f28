"""Fixtures the notifier's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from quartermaster.db import connect_pool


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session's PostgreSQL (10 connections: the store's tests claim
    from 20 callers at once)."""
    p = await connect_pool(infra.database_url, max_size=10)
    try:
        yield p
    finally:
        await p.close()
