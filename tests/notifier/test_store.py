"""The delivery store against the real PostgreSQL: insert-if-absent, claims that never
overlap, outcomes fenced on the claim, the reconciler's hand-back, replay."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from services.notifier import cli
from services.notifier.channel import Message
from services.notifier.plan import Audience, Plan, Planned, Preference, plan_digest
from services.notifier.schedule import Queued
from services.notifier.stores.deliveries import DeliveryStore

SERIAL = ("slack",)  # paced per address, as wiring says when Slack is paced


def plan(n: int, recipients: tuple[str, ...] = ("ann", "bob")) -> Plan:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        m = Message(f"k{i}", "threshold_crossed", f"s{i}", f"t{i}")
        out += [Planned(f"k{i}", r, "slack", f"U{r}", r, m, now) for r in recipients]
    return Plan(out, [Queued("mo", "k0", "anomaly", "Ann: unusual", "line")])


@pytest.mark.infra
async def test_intents_recorded_twice_are_one_row_each_and_claims_never_overlap(
    pool: asyncpg.Pool,
) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    a, b = DeliveryStore(pool, ws, "a"), DeliveryStore(pool, ws, "b")
    assert await a.record(plan(50)) == 100
    assert await b.record(plan(50)) == 0
    ids: list[int] = []
    stores = [s for s in (a, b) for _ in range(10)]
    while len(ids) < 100:  # concurrent claims; each round's rows then delivered
        claims = await asyncio.gather(*(s.claim(7, 30) for s in stores))
        assert any(claims), f"stuck after {len(ids)}"
        for store, batch in zip(stores, claims, strict=True):
            for d in batch:
                ids.append(d.id)
                assert await store.delivered(d.id, "ok")
    assert len(ids) == len(set(ids)) == 100
    queued = await pool.fetchval(
        "SELECT count(*) FROM notifier.digest_queue WHERE workspace_id = $1", ws
    )
    assert queued == 1


@pytest.mark.infra
async def test_a_burst_to_one_person_waits_on_their_turn_not_everyones(pool: asyncpg.Pool) -> None:
    """Breaker: 300 requests' notices to alice, paced by Slack at one a second, held
    bob's (and alice's e-mail) for six minutes. For a channel paced per address, a claim
    takes each address's oldest due row, and none of an address with a row being sent;
    other channels (e-mail here, webhooks) go on oldest first."""
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    store = DeliveryStore(pool, ws, "a")
    await store.record(plan(50, ("ann",)))
    now = datetime.now(UTC)
    m = Message("late", "threshold_crossed", "s", "t")
    late = [Planned("late", "bob", "slack", "Ubob", "bob", m, now),
            Planned("late", "ann", "email", "ann@x", "ann", m, now)]  # fmt: skip
    await store.record(Plan(late, []))
    first = await store.claim(4, 30, SERIAL)
    assert sorted((d.recipient, d.channel, d.dedupe_key) for d in first) == [
        ("ann", "email", "late"), ("ann", "slack", "k0"), ("bob", "slack", "late"),
    ]  # fmt: skip
    # Without a paced channel: oldest first, as many of one address as are due.
    other = DeliveryStore(pool, ws, "b")
    unpaced = await other.claim(3, 30)
    assert [d.recipient for d in unpaced] == ["ann"] * 3
    for d in unpaced:
        assert await other.delivered(d.id, "ok")
    assert await store.claim(4, 30, SERIAL) == []  # ann's Slack is busy; the rest are out
    [ann] = [d for d in first if d.channel == "slack" and d.recipient == "ann"]
    assert await store.delivered(ann.id, "ok")
    [following] = await store.claim(4, 30, SERIAL)
    assert following.recipient == "ann"


@pytest.mark.infra
async def test_outcomes_are_fenced_and_expired_claims_come_back_unsure(pool: asyncpg.Pool) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    a, b = DeliveryStore(pool, ws, "a"), DeliveryStore(pool, ws, "b")
    await a.record(plan(1, ("ann", "bob")))
    first, second = await a.claim(10, 0.01)
    assert (first.attempts, first.unsure) == (1, False)
    await asyncio.sleep(0.05)  # both claims run out
    assert await a.reconcile() == 2
    assert not await a.delivered(first.id, "late")  # no longer a's
    again = {d.id: d for d in await b.claim(10, 30)}
    assert set(again) == {first.id, second.id}
    assert all(d.unsure and d.attempts == 2 for d in again.values())
    assert await b.delivered(first.id, "D1:1")
    assert await b.failed(second.id, "slack chat.postMessage: channel_not_found")
    [failed] = await a.list(["failed"])
    assert (failed.id, failed.reason) == (second.id, "slack chat.postMessage: channel_not_found")
    replayed = await a.replay(second.id)
    assert replayed is not None
    assert (replayed.state, replayed.attempts) == ("pending", 0)
    assert await a.replay(first.id) is None  # delivered: nothing to replay
    [d] = await a.claim(10, 30)
    assert d.id == second.id
    assert await a.retry(d.id, 3600, "slack: ratelimited")
    assert await a.claim(10, 30) == []  # not due for an hour


@pytest.mark.infra
async def test_the_cli_lists_failed_deliveries_and_replays_one(
    infra: Infra, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    store = DeliveryStore(pool, ws, "a")
    await store.record(plan(1, ("ann",)))
    [d] = await store.claim(1, 30)
    await store.failed(d.id, "slack users.lookupByEmail: users_not_found")
    monkeypatch.setenv("QM_DATABASE_URL", infra.database_url)
    monkeypatch.setenv("QM_WORKSPACE_ID", ws)

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return cli.main(list(argv), out), out.getvalue()

    code, listed = await asyncio.to_thread(run, "deliveries", "--state", "failed")
    assert code == 0
    [header, line] = listed.splitlines()
    assert header.split()[:3] == ["id", "state", "channel"]
    assert line.split()[:4] == [str(d.id), "failed", "slack", "ann"]
    assert line.endswith("k0  slack users.lookupByEmail: users_not_found")
    assert await asyncio.to_thread(run, "replay", str(d.id)) == (
        0, f"delivery {d.id} (slack to ann) is pending again\n")  # fmt: skip
    assert (await asyncio.to_thread(run, "replay", str(d.id)))[0] == 1  # not failed now
    [again] = await store.claim(1, 30)
    assert (again.id, again.attempts) == (d.id, 1)


@pytest.mark.infra
async def test_queued_facts_are_taken_into_one_digest_once(pool: asyncpg.Pool) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    store = DeliveryStore(pool, ws, "a")
    facts = [Queued("mo", f"anomaly:user:{u}:1", "anomaly", f"{u}: unusual", "x") for u in "ab"]
    await store.record(Plan([], facts))
    now = datetime.now(UTC)
    who = Audience({}, {}, Preference(("slack",)), ("slack",))

    async def build(waiting: list[Queued]) -> Plan:
        return plan_digest(waiting, now.date(), who, now)

    later = now + timedelta(seconds=5)
    assert await store.take_digests(later, build) == 2
    assert await store.take_digests(later, build) == 0
    [d] = await store.list()
    assert (d.recipient, d.dedupe_key) == ("mo", f"digest:mo:{now.date().isoformat()}")
    assert d.message.text.count("unusual") == 2
