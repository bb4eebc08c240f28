"""The notifier's probes (services.notifier.health): a notifier process on a PostgreSQL of
the test's own says ready on /healthz, then 503 naming PostgreSQL once it is stopped,
while /livez stays 200 (a restart would not bring the database back), and ready again
when it is back; in this process, a loop that dies makes both 503, naming it, and is
logged; a notifier still starting is alive and not ready."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from devtools.localinfra import free_port
from devtools.localinfra.postgres import LocalPostgres
from devtools.localinfra.stack import Infra
from services.notifier import wiring
from services.notifier.health import Health
from services.notifier.sender import Reconciler
from services.notifier.settings import NotifierSettings
from tests.helpers import eventually
from tests.notifier.kit import process

pytestmark = pytest.mark.infra


def _env(service_env: dict[str, str], database_url: str) -> dict[str, str]:
    """A notifier with nothing to deliver: its Slack and directory are ports nobody
    listens on (neither is asked at start), a group of its own."""
    return {
        **service_env,
        "QM_DATABASE_URL": database_url,
        "QM_NOTIFIER_SLACK_BASE_URL": f"http://127.0.0.1:{free_port()}/api/",
        "QM_DIRECTORY_ADDR": f"127.0.0.1:{free_port()}",
        "QM_NOTIFIER_GROUP_ID": f"qm-notifier-health-{uuid.uuid4().hex[:8]}",
    }


async def _get(addr: str, path: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of GET http://<addr><path>; (0, {}) when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"http://{addr}{path}") as answer,
        ):
            return answer.status, await answer.json()
    except aiohttp.ClientConnectionError:
        return 0, {}


async def test_a_notifier_process_is_unready_while_postgresql_is_out_of_reach(
    own_postgres: LocalPostgres, service_env: dict[str, str]
) -> None:
    addr = f"127.0.0.1:{free_port()}"
    env = _env(service_env, own_postgres.url) | {"QM_NOTIFIER_METRICS_ADDR": addr}
    notifier = process("notifier-health", env)
    notifier.start()
    try:

        async def ready() -> int:
            return (await _get(addr, "/healthz"))[0]

        await eventually(ready, 200, within=60)
        status, body = await _get(addr, "/healthz")
        assert body["postgres"] == "ok"
        assert body["loops"] == dict.fromkeys(
            ("consumer", "sender", "reconciler", "digester", "backlog"), "running"
        )
        assert (await _get(addr, "/livez"))[0] == 200

        own_postgres.stop()
        await eventually(ready, 503, within=30)
        status, body = await _get(addr, "/healthz")
        assert (status, body["status"]) == (503, "unavailable")
        assert body["postgres"].startswith("out of reach ("), body
        assert (await _get(addr, "/livez"))[0] == 200, "alive: a restart would not mend it"
        assert notifier.poll() is None

        own_postgres.fresh = False  # the same cluster, its data kept
        own_postgres.start()
        await eventually(ready, 200, within=60)
    finally:
        notifier.stop()


@pytest.fixture
async def health() -> AsyncIterator[tuple[Health, str]]:
    h = Health()
    addr = f"127.0.0.1:{free_port()}"
    runner = await h.serve(addr)
    try:
        yield h, addr
    finally:
        await runner.cleanup()


async def test_a_loop_that_dies_makes_the_notifier_unhealthy_and_is_logged(
    infra: Infra,
    service_env: dict[str, str],
    health: tuple[Health, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h, addr = health
    # Starting: alive (the startup probe passes), not ready.
    assert await _get(addr, "/healthz") == (503, {"status": "starting"})
    assert (await _get(addr, "/livez"))[0] == 200

    async def broken(self: Reconciler) -> None:
        raise RuntimeError("a bug in the reconciler")

    monkeypatch.setattr(Reconciler, "run", broken)
    running = await wiring.start(NotifierSettings.from_env(_env(service_env, infra.database_url)))
    try:
        h.started(running.pool, running.tasks)
        status, body = await _get(addr, "/livez")
        assert status == 503
        assert body["loops"]["reconciler"] == "ended: RuntimeError: a bug in the reconciler"
        assert body["loops"]["sender"] == "running"
        status, body = await _get(addr, "/healthz")
        assert (status, body["postgres"]) == (503, "ok")
        assert body["loops"]["reconciler"].startswith("ended: RuntimeError")
        said = [r for r in caplog.records if r.name == "qm.notifier.health"]
        assert [r.levelno for r in said] == [logging.ERROR]
        assert "reconciler loop ended" in said[0].getMessage()
    finally:
        h.stopping()
        await running.stop()
    # Loops ended by the stop are not reported as dying.
    assert len([r for r in caplog.records if r.name == "qm.notifier.health"]) == 1
