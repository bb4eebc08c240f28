"""What drove a threshold crossing: `SpendDrivers` asks the Cost API (here a small fake
UsageService on a real gRPC server) for a person's top product and model of the
period, and the message says them; when the Cost API can't answer, the message goes
without them. tests/notifier/test_end_to_end.py does it with the real Cost API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from devtools.localinfra import free_port
from quartermaster.v1 import cost_pb2, cost_pb2_grpc
from quartermaster.wire import from_timestamp
from services.notifier.audience import Addressee, Intent, Kind, Role
from services.notifier.drivers import SpendDrivers
from services.notifier.render import Style, render_intent

UTC_ZONE = ZoneInfo("UTC")
AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class FakeUsage(cost_pb2_grpc.UsageServiceServicer):
    """Answers QueryUsage with the largest row of its dimension; records the requests."""

    def __init__(self) -> None:
        self.asked: list[cost_pb2.QueryUsageRequest] = []

    async def QueryUsage(self, request: Any, context: Any) -> cost_pb2.QueryUsageResponse:
        self.asked.append(request)
        if request.group_by == [cost_pb2.DIMENSION_PRODUCT]:
            row = cost_pb2.UsageRow(product="agents", micros=15_750_000)
        else:
            row = cost_pb2.UsageRow(model="gpt-5", micros=12_000_000)
        return cost_pb2.QueryUsageResponse(rows=[row])

    async def TopSpenders(self, request: Any, context: Any) -> cost_pb2.TopSpendersResponse:
        raise AssertionError("not asked")


@pytest.fixture
async def usage_api() -> AsyncIterator[tuple[str, FakeUsage]]:
    fake = FakeUsage()
    server = grpc.aio.server()
    cost_pb2_grpc.add_UsageServiceServicer_to_server(fake, server)
    addr = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(addr)
    await server.start()
    try:
        yield addr, fake
    finally:
        await server.stop(None)


def crossing(subject: str = "user:carol", **data: str) -> Intent:
    return Intent(
        dedupe_key=f"threshold:{subject}:2026-11:80:carol",
        kind=Kind.THRESHOLD,
        recipient_user_id="carol",
        subject="You have used 80% of your monthly AI budget",
        body="",
        data={
            "subject": subject,
            "percent": "80",
            "used_micros": "16000000",
            "limit_micros": "20000000",
            "period_key": "2026-11",
            **data,
        },
        created_at=AT,
    )


async def test_a_crossing_says_its_top_product_and_model_of_the_period(
    usage_api: tuple[str, FakeUsage],
) -> None:
    addr, fake = usage_api
    async with SpendDrivers(addr, tls=None, token="t", tz=UTC_ZONE) as drivers:
        told = await drivers.add_to(crossing())
    assert {k: told.data[k] for k in ("top_product", "top_model")} == {
        "top_product": "agents", "top_model": "gpt-5",
    }  # fmt: skip
    asked = fake.asked[0]
    assert list(asked.filter.user_ids) == ["carol"]
    assert from_timestamp(asked.filter.start) == datetime(2026, 11, 1, tzinfo=UTC)
    assert asked.limit == 1
    message = render_intent(told, Addressee("carol", Role.SELF), "Carol", Style("", UTC_ZONE))
    assert "Most of it: product agents (15.75 credits), model gpt-5 (12.00 credits)." in (
        message.text
    )


async def test_only_a_persons_crossing_without_drivers_is_asked_about(
    usage_api: tuple[str, FakeUsage],
) -> None:
    addr, fake = usage_api
    given = crossing(top_product="chat")
    pool = crossing("pool:ml-team")
    anomaly = Intent("anomaly:carol", Kind.ANOMALY, "carol", "Spend rate", "", {}, AT)
    old = crossing(period_key="2026-10")  # a period that is over: no window to ask about
    async with SpendDrivers(addr, tls=None, token="t", tz=UTC_ZONE) as drivers:
        for intent in (given, pool, anomaly, old):
            assert await drivers.add_to(intent) is intent
    assert fake.asked == []


async def test_without_the_cost_api_the_crossing_goes_on_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    intent = crossing()
    with caplog.at_level(logging.WARNING, logger="qm.notifier.drivers"):
        async with SpendDrivers(nobody, tls=None, token="t", tz=UTC_ZONE, deadline_s=0.5) as d:
            assert await d.add_to(intent) is intent
    assert f"goes without what drove it: the Cost API at {nobody}: UNAVAILABLE" in caplog.text
    message = render_intent(intent, Addressee("carol", Role.SELF), "Carol", Style("", UTC_ZONE))
    assert "Most of it" not in message.text
    assert "Used 16.00 of 20.00 credits in 2026-11 (80 %)." in message.text
