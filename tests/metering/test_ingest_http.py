"""The HTTP ingest's refusals, on a real aiohttp server in this process with a real
producer (issue 12, item 3). None of these reaches a broker: each refusal comes
before anything is sent, and the backpressure test points the producer at a port
nothing listens on, so its records wait exactly as they would for a broker that is
slow or gone. What is accepted and counted is tests/metering/test_ingest_counts.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format

from devtools.localinfra import free_port
from services.metering import ingest, ingest_http
from services.metering.ingest_body import MAX_NAMED
from services.metering.settings import MeteringSettings
from tests.helpers import TOKENS, TOKENS_SPEC, eventually, new_user, usage


def settings(**env: str) -> MeteringSettings:
    return MeteringSettings.from_env(
        {"QM_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "QM_TOKENS": TOKENS_SPEC, **env}
    )


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """The ingest's POST URL; its broker answers nobody, so nothing is ever accepted."""
    running = await ingest.start(settings(QM_METERING_INGEST_MAX_BODY_BYTES="4096"), "127.0.0.1:0")
    try:
        yield running.url
    finally:
        await running.stop()


def event_json(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(usage(new_user()))
    out.update(fields)
    return out


async def post(
    url: str, body: bytes, role: str | None = "reporter", kind: str = "application/json"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Content-Type": kind}
    if role is not None:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, json.loads(await r.read()), dict(r.headers)


async def test_a_missing_or_unknown_token_is_401_and_another_role_403(url: str) -> None:
    body = json.dumps(event_json()).encode()
    status, answer, headers = await post(url, body, role=None)
    assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
    assert "Authorization: Bearer" in answer["error"]
    async with aiohttp.ClientSession() as http:
        wrong = {"Authorization": "Bearer not-a-known-token-0123456789"}
        async with http.post(url, data=body, headers=wrong) as r:
            assert r.status == 401
            assert "unknown token" in (await r.json())["error"]
    status, answer, _ = await post(url, body, role="gateway")
    assert status == 403
    assert answer["error"] == "credential 'tests-gateway' (gateway) lacks role reporter"


async def test_a_body_past_the_limit_is_413(url: str) -> None:
    body = json.dumps([event_json() for _ in range(40)]).encode()
    assert len(body) > 4096
    status, answer, _ = await post(url, body)
    assert status == 413
    assert answer["error"].startswith("body larger than 4096 bytes")


async def test_a_body_of_more_events_than_may_wait_is_413_not_503_for_ever() -> None:
    env = {"QM_METERING_INGEST_QUEUE_EVENTS": "3"}
    running = await ingest.start(settings(**env), "127.0.0.1:0")
    try:
        status, answer, _ = await post(running.url, json.dumps([event_json()] * 4).encode())
    finally:
        await running.stop()
    assert status == 413
    assert answer["error"].startswith("4 events: at most 3 a body")


async def test_bad_events_are_named_by_index_and_field_and_none_is_accepted(url: str) -> None:
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    events = [
        event_json(),
        event_json(inputTokens="-5", product=""),
        event_json(),
        event_json(outputTokens="lots"),
        event_json(occurredAt=old),
        [1, 2],
    ]
    status, answer, _ = await post(url, json.dumps(events).encode())
    assert status == 400
    assert answer["error"] == "4 bad event(s); none of the body was accepted"
    named = [(p["index"], p["field"]) for p in answer["problems"]]
    assert named == [
        (1, "product"), (1, "input_tokens"), (3, "outputTokens"), (4, "occurred_at"), (5, ""),
    ]  # fmt: skip
    assert answer["problems"][1]["message"] == "must not be negative"
    assert "older than the 35-day horizon" in answer["problems"][3]["message"]
    assert "expected a JSON object, got an array" in answer["problems"][4]["message"]


async def test_an_enum_that_is_no_name_or_integer_is_named_not_a_500(url: str) -> None:
    # 1e999 made protobuf's ParseDict raise OverflowError: the server answered 500
    body = b"[" + json.dumps(event_json()).encode() + b", " + json.dumps(event_json())[:-1].encode()
    status, answer, _ = await post(url, body + b', "ending": 1e999}]')
    assert status == 400
    assert [(p["index"], p["field"]) for p in answer["problems"]] == [(1, "ending")]
    assert answer["problems"][0]["message"].startswith("Infinity is no ending: expected one of")


async def test_an_event_of_another_workspace_is_refused_not_accepted_then_dropped() -> None:
    """Breaker: a body naming workspace 'acme' was answered 202 and then dead-lettered
    by metering ('another workspace'): the reporter was told it counted. The ingest
    makes the checks metering makes, the workspace among them."""
    running = await ingest.start(settings(QM_WORKSPACE_ID="ours"), "127.0.0.1:0")
    try:
        body = json.dumps([event_json(workspaceId="ours"), event_json(),
                           event_json(workspaceId="acme")]).encode()  # fmt: skip
        status, answer, _ = await post(running.url, body)
    finally:
        await running.stop()
    assert status == 400
    [problem] = answer["problems"]
    assert (problem["index"], problem["field"]) == (2, "workspace_id")
    assert (
        "'acme' is another workspace; this metering counts workspace 'ours'" in (problem["message"])
    )


async def test_ndjson_array_and_single_object_are_read_alike(url: str) -> None:
    # Each is read, validated and refused for the same one bad field; the shapes
    # themselves are accepted and counted in test_ingest_counts.
    bad = event_json(model="")
    good = event_json()
    shapes = {
        "application/json": json.dumps(bad).encode(),
        "application/json; charset=utf-8": json.dumps([good, bad]).encode(),
        "application/x-ndjson": f"{json.dumps(good)}\n\n{json.dumps(bad)}\n".encode(),
    }
    for kind, body in shapes.items():
        status, answer, _ = await post(url, body, kind=kind)
        assert status == 400, kind
        index = 0 if kind == "application/json" else 1
        assert [(p["index"], p["field"]) for p in answer["problems"]] == [(index, "model")]


async def test_unreadable_bodies_are_named(url: str) -> None:
    lines = f"{json.dumps(event_json())}\nnot json\n{json.dumps(event_json())}\n{{"
    status, answer, _ = await post(url, lines.encode(), kind="application/x-ndjson")
    assert status == 400
    assert [p["index"] for p in answer["problems"]] == [1, 3]
    status, answer, _ = await post(url, lines.encode())
    assert status == 400
    assert answer["problems"][0]["index"] is None
    assert "one event a line is NDJSON" in answer["problems"][0]["message"]
    for body in (b"", b"[]", b"\xff"):
        status, _, _ = await post(url, body)
        assert status == 400, body
    status, answer, _ = await post(url, b"<xml/>", kind="text/xml")
    assert status == 415
    assert "application/x-ndjson" in answer["error"]


async def test_many_bad_events_are_named_up_to_a_bound() -> None:
    running = await ingest.start(settings(), "127.0.0.1:0")
    try:
        events = [event_json(userId="") for _ in range(MAX_NAMED + 50)]
        status, answer, _ = await post(running.url, json.dumps(events).encode())
        assert status == 400
        assert answer["error"].startswith(f"{MAX_NAMED + 50} bad event(s)")
        assert len(answer["problems"]) == MAX_NAMED
    finally:
        await running.stop()


async def test_a_full_queue_and_a_silent_broker_answer_503_with_retry_after() -> None:
    running = await ingest.start(
        settings(
            QM_METERING_INGEST_QUEUE_EVENTS="2",
            QM_METERING_INGEST_DELIVERY_TIMEOUT_SECONDS="2",
            QM_METERING_INGEST_RETRY_AFTER_SECONDS="3",
        ),
        "127.0.0.1:0",
    )
    running.ingest.partitions = 3  # the broker can't say; the queue is what is tested
    try:
        first = asyncio.ensure_future(post(running.url, json.dumps(event_json()).encode()))

        async def waiting() -> int:
            return running.ingest.producer.in_flight

        await eventually(waiting, 1)  # the first body's event waits for the broker
        # 1 event waits: two more would pass the queue's 2
        status, answer, headers = await post(
            running.url, json.dumps([event_json(), event_json()]).encode()
        )
        assert (status, headers["Retry-After"]) == (503, "3")
        assert "1 events already wait for the broker" in answer["error"]
        status, answer, headers = await first
        assert (status, headers["Retry-After"]) == (503, "3")
        assert "nothing was accepted; send the body again after Retry-After" in answer["error"]
    finally:
        await running.stop()


async def test_health_says_the_broker_is_unreachable(url: str) -> None:
    health = url.replace("/v1/usage", "/healthz")
    async with aiohttp.ClientSession() as http, http.get(health) as r:
        assert r.status == 503
        assert (await r.json())["status"] == "unavailable"
    status, answer, headers = await post(url, json.dumps(event_json()).encode())
    assert (status, headers["Retry-After"]) == (503, "1")
    assert "the broker is unreachable" in answer["error"]


async def test_an_integer_too_long_for_python_is_400_naming_index_and_field() -> None:
    """Breaker (issue 14): 5001 digits made json.loads raise ValueError, answered 500,
    which a reporter retries forever; it is a bad field of a bad event."""
    huge = "1" + "0" * 5000
    body = f'[{json.dumps(event_json())}, {json.dumps(event_json())[:-1]}, "inputTokens": {huge}}}]'
    running = await ingest.start(settings(), "127.0.0.1:0")
    try:
        status, answer, _ = await post(running.url, body.encode())
    finally:
        await running.stop()
    assert status == 400
    assert [(p["index"], p["field"]) for p in answer["problems"]] == [(1, "inputTokens")]
    assert "5001 digits" in answer["problems"][0]["message"]


class _SlowBroker:
    """A producer whose topic lookup takes 0.2 s and fails, counting the lookups."""

    in_flight, renewals = 0, 0

    def __init__(self) -> None:
        self.asked = 0

    def partitions(self, _timeout: float) -> int:
        self.asked += 1
        time.sleep(0.2)
        raise OSError("qm.usage.v1: broker down")

    def unusable(self) -> None:
        return None


async def test_posts_share_one_partition_lookup_while_the_broker_is_gone() -> None:
    # each post asked on a thread of its own: a burst of 100 with the broker gone held
    # the default executor, and /healthz behind it, for ~30 s
    broker = _SlowBroker()
    server = ingest_http.Ingest(
        broker,  # type: ignore[arg-type]
        ingest_http.Reporters({}), max_body=1000, max_age=timedelta(days=1), retry_after=1,
    )  # fmt: skip
    began = time.monotonic()
    assert await asyncio.gather(*(server._partitions() for _ in range(100))) == [None] * 100
    assert broker.asked == 1
    assert time.monotonic() - began < 2
    assert await server._partitions() is None  # within PARTITIONS_RETRY_SECONDS: not asked
    assert broker.asked == 1
