"""`make run`: the whole system on this machine, with demo traffic.

Starts PostgreSQL and the broker (unless QM_DATABASE_URL / QM_KAFKA_BOOTSTRAP point
elsewhere), applies migrations, creates topics, seeds a demo workspace, starts the
metering worker and the policy server as child processes, and runs the traffic
simulator until Ctrl-C. Then it stops everything it started, children first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quartermaster import simulator, telemetry
from quartermaster.db import connect_pool
from quartermaster.localinfra.process import ChildProcess
from quartermaster.localinfra.stack import open_infra
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.settings import load_or_exit, setting
from services.policy.decide import Enforcement
from services.policy.directory import UserInfo
from services.policy.settings import PolicySettings
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DevSettings(PolicySettings):
    run_dir: Path = setting("QM_RUN_DIR", ROOT / ".run", "Where `make run` keeps data and logs")
    demo_traffic: bool = setting("QM_DEMO_TRAFFIC", True, "Run the demo traffic simulator")
    demo_limit_credits: int = setting(
        "QM_DEMO_LIMIT_CREDITS", 20, "The demo workspace's default monthly limit"
    )
    local_pg_port: int = setting(
        "QM_LOCAL_PG_PORT", 55432, "Port of the local PostgreSQL (when QM_DATABASE_URL is unset)"
    )
    local_broker_port: int = setting(
        "QM_LOCAL_BROKER_PORT", 9092, "Port of the local broker (when QM_KAFKA_BOOTSTRAP is unset)"
    )


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _seed(settings: DevSettings, database_url: str) -> None:
    pool = await connect_pool(database_url)
    try:
        await LimitStore(pool, settings.workspace_id).set_workspace_default(
            settings.demo_limit_credits * MICROS_PER_CREDIT,
            Enforcement.HARD,
            "make-run-seed",
        )
        for p in simulator.PERSONAS:
            user = UserInfo(p.user_id, f"{p.user_id}@example.com", p.display_name)
            await DirectoryStore(pool, settings.workspace_id).upsert_user(user, "system")
    finally:
        await pool.close()


async def _wait_serving(addr: str, proc: ChildProcess, within: float) -> None:
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"policy exited:\n{proc.log_tail()}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"policy was not SERVING within {within:.0f}s:\n{proc.log_tail()}")


async def _main(settings: DevSettings) -> None:
    """Runs until cancelled (Ctrl-C); every `finally` on the way out stops what it started."""
    logs = settings.run_dir / "logs"
    say("Quartermaster: starting PostgreSQL and the Kafka-protocol broker ...")
    with open_infra(
        settings.run_dir,
        pg_port=settings.local_pg_port,
        broker_port=settings.local_broker_port,
        durable=True,
        partitions=settings.topic_partitions,
    ) as infra:
        say(f"  kafka     {infra.kafka_bootstrap} ({infra.kafka_origin})")
        say(f"  postgres  {infra.database_url} ({infra.database_origin})")
        await _seed(settings, infra.database_url)
        say(
            f"  seeded workspace {settings.workspace_id!r}: default limit "
            f"{settings.demo_limit_credits} credits/month (hard), "
            f"{len(simulator.PERSONAS)} people"
        )
        env = {**os.environ, **infra.env(), "QM_POLICY_ADDR": settings.addr}
        env.setdefault("QM_METERING_DATA_DIR", str(settings.run_dir / "faust"))
        if not env.get("QM_POLICY_ADMIN_TOKENS") and not env.get("QM_METERING_ADMIN_TOKENS"):
            # A credential for this run only, so admin calls can be tried at once.
            token = secrets.token_urlsafe(24)
            env["QM_POLICY_ADMIN_TOKENS"] = env["QM_METERING_ADMIN_TOKENS"] = f"local-admin:{token}"
            say(f"  admin token for this run: {token}")
            say(f"    grpcurl -plaintext -H 'authorization: Bearer {token}' -d "
                "'{\"user_id\":\"carol\"}' "
                f"{settings.addr} quartermaster.v1.PolicyAdminService/ExplainLimit")  # fmt: skip
            say(f"    QM_ADMIN_TOKEN={token} .venv/bin/python -m services.metering.cli "
                "prices load prices.yaml --dry-run")  # fmt: skip

        def spawn(name: str, module: str) -> ChildProcess:
            argv = [sys.executable, "-m", module]
            return ChildProcess(name, argv, logs / f"{name}.log", env=env, cwd=ROOT)

        children = [
            spawn("metering", "services.metering"),
            spawn("policy", "services.policy"),
            spawn("cost-api", "services.metering.api"),
        ]
        try:
            for child in children:
                child.start()
                say(f"  started {child.name} (pid {child.pid}), log: {child.log_path}")
            await _wait_serving(settings.addr, children[1], 60)
            say(f"  policy gRPC serving on {settings.addr} (health + reflection on)")
            api_addr = env.get("QM_USAGE_API_ADDR", "127.0.0.1:50052")
            say(f"  Cost API and price catalog on {api_addr}: python -m services.metering.cli")
            if settings.demo_traffic:
                say("Demo traffic: three people spend; carol's runaway agent hits the limit.")
                say("Press Ctrl-C to stop.\n")
                await simulator.run(infra.kafka_bootstrap, settings.addr, settings.workspace_id)
            else:
                say("QM_DEMO_TRAFFIC=0: no demo traffic. Press Ctrl-C to stop.")
                await asyncio.Event().wait()
        finally:
            say("\nStopping ...")
            for child in reversed(children):
                child.stop(timeout=10)
                say(f"  stopped {child.name}")
            say("  stopping the broker and PostgreSQL ...")


def main() -> None:
    settings = load_or_exit(DevSettings, "make run")
    telemetry.setup("devstack", "WARNING")

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await _main(settings)
        say("Stopped. Bye.")

    asyncio.run(runner())


if __name__ == "__main__":
    main()
