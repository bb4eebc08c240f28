"""JSON over HTTP in the partitioning matrix (issue 12, item 3; the Kafka producers are
tests/metering/test_any_partitioning.py): N events from M users posted to the real
HTTP ingest process, as arrays, NDJSON and single objects, a third of them posted
twice in other bodies, count exactly N times one event's amount per user, with the
real broker and metering worker. The refusals are tests/metering/test_ingest_http.py."""

from __future__ import annotations

import asyncio
import json
import random
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from google.protobuf import json_format

from quartermaster.v1 import usage_pb2
from tests.conftest import MeteringWorker
from tests.helpers import TOKENS, eventually, new_user, scrape, usage
from tests.metering.test_any_partitioning import EVENT_MICROS, spread_users, used_of

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra
AUTH = {"Authorization": f"Bearer {TOKENS['reporter']}"}


def bodies(events: list[usage_pb2.UsageEvent]) -> list[tuple[str, bytes]]:
    """`events` cut into bodies of 1 to 20 events, each shaped one of the three ways:
    (content type, body)."""
    rng = random.Random(11)
    out: list[tuple[str, bytes]] = []
    i = 0
    while i < len(events):
        n = rng.choice([1, 1, 5, 20])
        chunk: list[dict[str, Any]] = [json_format.MessageToDict(e) for e in events[i : i + n]]
        i += n
        if len(chunk) == 1 and rng.random() < 0.5:
            out.append(("application/json", json.dumps(chunk[0]).encode()))
        elif rng.random() < 0.5:
            out.append(("application/json", json.dumps(chunk).encode()))
        else:
            lines = "".join(json.dumps(e) + "\n" for e in chunk)
            out.append(("application/x-ndjson", lines.encode()))
    return out


async def post_all(addr: str, shaped: list[tuple[str, bytes]]) -> list[int]:
    """Post every body, 8 at a time; the status of each."""
    limit = asyncio.Semaphore(8)
    async with aiohttp.ClientSession(f"http://{addr}") as http:

        async def one(kind: str, body: bytes) -> int:
            async with (
                limit,
                http.post("/v1/usage", data=body, headers={**AUTH, "Content-Type": kind}) as r,
            ):
                return r.status

        return list(await asyncio.gather(*(one(k, b) for k, b in shaped)))


async def test_http_json_counts_every_event_exactly_once(
    ingest_addr: str, metering: MeteringWorker, policy: Stub
) -> None:
    users, per_user = spread_users(5), 12
    events = [usage(u) for u in users for _ in range(per_user)]
    random.Random(5).shuffle(events)
    again = events[: len(events) // 3]
    random.Random(6).shuffle(again)
    before = scrape(ingest_addr, "qm_ingest_events_total", outcome="accepted") or 0.0
    statuses = await post_all(ingest_addr, bodies(events) + bodies(again))
    assert set(statuses) == {202}
    for u in users:
        await eventually(used_of(policy, u), per_user * EVENT_MICROS, within=60)
    await asyncio.sleep(1.5)  # a second count would show by now
    for u in users:
        assert await used_of(policy, u)() == per_user * EVENT_MICROS, u
    accepted = scrape(ingest_addr, "qm_ingest_events_total", outcome="accepted")
    assert accepted == before + len(events) + len(again)
    # Every 202 is timed (the dashboard's latency panel reads this histogram).
    timed = scrape(ingest_addr, "qm_ingest_request_duration_seconds_count", status="202")
    assert (timed or 0) >= len(statuses)


async def test_a_field_no_usage_event_has_is_ignored_and_said(
    ingest_addr: str, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    misspelled = {**json_format.MessageToDict(usage(user)), "ouputTokens": "800", "x": 1}
    plain = json_format.MessageToDict(usage(user))
    async with aiohttp.ClientSession(f"http://{ingest_addr}") as http:
        async with http.post("/v1/usage", json=[misspelled, plain], headers=AUTH) as r:
            assert r.status == 202
            assert await r.json() == {"accepted": 2, "ignored_fields": ["ouputTokens", "x"]}
        async with http.post("/v1/usage", json=plain, headers=AUTH) as r:
            assert await r.json() == {"accepted": 1}  # sent again: counted once
    await eventually(used_of(policy, user), 2 * EVENT_MICROS, within=60)


async def test_health_and_metrics_are_served(ingest_addr: str) -> None:
    async with aiohttp.ClientSession(f"http://{ingest_addr}") as http:
        async with http.get("/healthz") as r:
            assert r.status == 200
            health = await r.json()
        assert health["status"] == "ok"
        assert health["broker"] == "qm.usage.v1: 3 partitions"
        async with http.post("/v1/usage", data=b"{}", headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 401  # the credential first, before anything of the body
    assert (scrape(ingest_addr, "qm_ingest_requests_total", status="401") or 0) >= 1
    assert scrape(ingest_addr, "qm_ingest_waiting_events") == 0
    # What the IngestRefusing alert reads besides the refusals (served from the start)
    assert scrape(ingest_addr, "qm_ingest_producer_usable") == 1
    assert scrape(ingest_addr, "qm_ingest_producer_renewals_total") == 0
    assert health["producer"] == "ok"
