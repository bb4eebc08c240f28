"""PostgreSQL freezing and thawing again and again (a proxy the test freezes for 0.5-4 s
at a time, with QM_DATABASE_TIMEOUT 2 s) while events flow: statements time out at
any step of the fenced commit, COMMIT included, whose outcome the worker can't know;
once PostgreSQL answers for good, every event is counted exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from devtools.localinfra.broker import LocalBroker
from devtools.localinfra.stack import Infra
from tests.helpers import eventually, new_user, produce_usage, usage
from tests.metering.test_broker_restart import Worker, day_total
from tests.metering.test_metering import EVENT_MICROS
from tests.metering.test_stop_bounded import env, start, through_proxy, workers  # noqa: F401

pytestmark = pytest.mark.infra


async def test_freezing_postgres_again_and_again_counts_every_event_once(
    infra: Infra,
    own_broker: LocalBroker,
    env: dict[str, str],  # noqa: F811
    workers: list[Worker],  # noqa: F811
) -> None:
    with through_proxy(env, timeout="2") as (proxy, env):
        users = [new_user() for _ in range(12)]
        sent = dict.fromkeys(users, 0)
        w = start(workers, env, "a")
        produce_usage(own_broker.bootstrap, [usage(x) for x in users])
        for x in users:
            sent[x] += 1
        for x in users:
            await eventually(day_total(infra.database_url, x), (EVENT_MICROS, 1), within=90)

        rng = random.Random(int(os.environ.get("QM_TEST_SEED", "20261202")))
        stop = asyncio.Event()

        async def flow() -> None:
            while not stop.is_set():
                batch = rng.sample(users, 4)
                await asyncio.to_thread(produce_usage, own_broker.bootstrap,
                                        [usage(x) for x in batch])  # fmt: skip
                for x in batch:
                    sent[x] += 1
                await asyncio.sleep(rng.uniform(0.05, 0.4))

        freezes = 0
        producing = asyncio.create_task(flow())
        began = time.monotonic()
        while time.monotonic() - began < 60:
            proxy.frozen.set()
            freezes += 1
            await asyncio.sleep(rng.uniform(0.5, 4.0))
            proxy.frozen.clear()
            await asyncio.sleep(rng.uniform(0.2, 3.0))
        stop.set()
        await producing
        print(f"{freezes} freezes; {sum(sent.values())} events sent")  # noqa: T201
        for x in users:
            await eventually(
                day_total(infra.database_url, x), (sent[x] * EVENT_MICROS, sent[x]), within=120
            )
        await asyncio.sleep(5)  # anything counted twice late would show now
        for x in users:
            got = await day_total(infra.database_url, x)()
            assert got == (sent[x] * EVENT_MICROS, sent[x]), (x, got, sent[x])
        log = w.log()
        print("timeouts logged:", log.count("did not answer in time"))  # noqa: T201
        assert w.proc.poll() is None, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
