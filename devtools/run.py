"""`make run`: the whole system on this machine, with demo traffic.

Starts PostgreSQL and the broker (unless QM_DATABASE_URL / QM_KAFKA_BOOTSTRAP point
elsewhere), applies migrations, creates topics, seeds a demo workspace, starts the
metering worker, the policy server, the Cost API, the requests service, the
notifier and metering's HTTP ingest as child processes (with no Slack token: the local
Slack stand-in and SMTP server in this process, the stand-in's buttons clicking
through the notifier's interactivity endpoint), asks for credits as carol, and runs
the traffic simulator until Ctrl-C. Then it stops everything it started, children
first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path

from pydantic import Field

from devtools import demo_requests as demo
from devtools import simulator
from devtools.discovery import settings_classes
from devtools.localinfra.health import wait_serving
from devtools.localinfra.process import ChildProcess
from devtools.localinfra.stack import Infra, open_infra
from devtools.ready import PROBE_USER, NotReady, probe_counted
from devtools.run_hints import credential_lines, demo_tokens, ingest_line, token_with
from devtools.run_notifier import slack_id, start_standin
from devtools.run_ports import listening, taken
from quartermaster import telemetry
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT
from quartermaster.redact import mask_url
from quartermaster.settings import Settings, load_or_exit
from services.policy.decide import Enforcement
from services.policy.directory import UserInfo
from services.policy.settings import PolicySettings
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore
from services.requests.settings import RequestsSettings

ROOT = Path(__file__).resolve().parent.parent
# How long make run waits for its readiness probe (a first start joins the broker's
# group and reads every topic from the start: seconds, not milliseconds).
READY_WITHIN_S = 60.0


class DevSettings(Settings):
    """What `make run` itself reads (QM_<FIELD>); the services' own settings are read
    beside it."""

    run_dir: Path = ROOT / ".run"
    """Where `make run` keeps data and logs"""
    demo_traffic: bool = True
    """Run the demo traffic simulator"""
    demo_limit_credits: int = Field(20, ge=0)
    """The demo workspace's default monthly limit"""
    demo_auto_approve: bool = True
    """When nobody has decided carol's credit request QM_DEMO_APPROVE_AFTER_SECONDS after
    she asks, make run approves it as her manager alice; false: it waits for alice's
    click on the Slack stand-in's page, or the CLI command it prints"""
    demo_approve_after_seconds: float = Field(30.0, ge=0, le=3600)
    """How long make run waits for alice to decide carol's request before approving it
    as her (with QM_DEMO_AUTO_APPROVE on)"""
    demo_ask_credits: int = Field(200, ge=1, le=50_000)
    """What carol asks for when her agent is denied"""
    demo_grant_seconds: int = Field(120, ge=5, le=86_400)
    """How long carol's grant lasts once approved (short: the demo shows its end)"""
    local_pg_port: int = Field(55432, ge=1, le=65535)
    """Port of the local PostgreSQL (when QM_DATABASE_URL is unset)"""
    local_broker_port: int = Field(9092, ge=1, le=65535)
    """Port of the local broker (when QM_KAFKA_BOOTSTRAP is unset)"""
    slack_standin_port: int = Field(8787, ge=1, le=65535)
    """Port of the local Slack stand-in, started when neither QM_NOTIFIER_SLACK_BOT_TOKEN
    nor QM_NOTIFIER_SLACK_BASE_URL is set; its page shows what the notifier sent"""
    slack_interactivity_url: str = ""
    """Where the stand-in page's buttons post signed clicks; empty: the notifier's Slack
    interactivity endpoint (QM_NOTIFIER_INTERACTIVITY_ADDR, 127.0.0.1:8093 here)"""
    smtp_sink_port: int = Field(8025, ge=1, le=65535)
    """Port of the local SMTP server, started with the Slack stand-in when
    QM_NOTIFIER_SMTP_HOST is unset; the stand-in's page shows its mails"""


def say(text: str) -> None:
    """A line for the person at the terminal. Ctrl-C also ends a pipe reader such as
    `make run | tee log`: a closed stdout must not stop the shutdown that follows it
    (which would leave the services running), so later lines go nowhere."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError:  # BrokenPipeError and friends
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


async def _seed(workspace_id: str, limit_credits: int, database_url: str) -> None:
    """The demo workspace's default limit and its people, written as policy's admin would."""
    pool = await connect_pool(database_url)
    try:
        # The one place devtools writes policy's tables: the demo's seed.
        await LimitStore(pool, workspace_id).set_workspace_default(
            limit_credits * MICROS_PER_CREDIT,
            Enforcement.HARD,
            "make-run-seed",
        )  # fmt: skip
        for p in simulator.PERSONAS:
            # alice approves carol's requests (her manager); Slack ids as the stand-in's
            manager = "alice" if p.user_id == "carol" else ""
            user = UserInfo(p.user_id, f"{p.user_id}@example.com", p.display_name,
                            slack_id(p.user_id), manager)  # fmt: skip
            await DirectoryStore(pool, workspace_id).upsert_user(user, "system")
    finally:
        await pool.close()


# Where `make run`'s services serve /metrics (metering's is on by default anyway).
LOCAL_METRICS = {"QM_POLICY_METRICS_ADDR": 9465, "QM_REQUESTS_METRICS_ADDR": 9466,
                 "QM_USAGE_API_METRICS_ADDR": 9468, "QM_NOTIFIER_METRICS_ADDR": 9467}  # fmt: skip


def _planned_env() -> dict[str, str]:
    """The children's environment as far as their listening addresses go (before the
    infrastructure is up: its own addresses are in `_local_ports`)."""
    env = {**os.environ}
    for name, port in LOCAL_METRICS.items():
        env.setdefault(name, f"127.0.0.1:{port}")
    return env


def _local_ports(dev: DevSettings) -> dict[str, int]:
    """The ports of what make run itself starts, by the setting that moves each."""
    env, ports = os.environ, {}
    if not (env.get("QM_NOTIFIER_SLACK_BOT_TOKEN") or env.get("QM_NOTIFIER_SLACK_BASE_URL")):
        ports["QM_SLACK_STANDIN_PORT"] = dev.slack_standin_port  # as run_notifier decides
        if not env.get("QM_NOTIFIER_SMTP_HOST"):
            ports["QM_SMTP_SINK_PORT"] = dev.smtp_sink_port
    if not env.get("QM_DATABASE_URL"):
        ports["QM_LOCAL_PG_PORT"] = dev.local_pg_port
    if not env.get("QM_KAFKA_BOOTSTRAP"):
        ports["QM_LOCAL_BROKER_PORT"] = dev.local_broker_port
    return ports


def _child_env(policy: PolicySettings, infra: Infra) -> dict[str, str]:
    """The children's environment: ours, pointed at `infra`, with a token per role for
    this run when QM_TOKENS is not configured (so every call can be tried at once),
    and the Cost API given a reader token for policy's directory."""
    env = {**os.environ, **infra.env(), "QM_POLICY_ADDR": policy.addr}
    # Every service's metrics, on the ports the chart uses (docs/operations.md).
    for name, port in LOCAL_METRICS.items():
        env.setdefault(name, f"127.0.0.1:{port}")
    made = not env.get("QM_TOKENS")
    if made:
        env["QM_TOKENS"] = demo_tokens()
    for line in credential_lines(env["QM_TOKENS"], made, policy):
        say(line)
    reader = token_with(env["QM_TOKENS"], "reader")
    for name in ("QM_DIRECTORY_TOKEN", "QM_REQUESTS_CLIENT_TOKEN"):
        if not env.get(name):
            env[name] = reader
    if not env.get("QM_NOTIFIER_DELEGATE_TOKEN"):
        env["QM_NOTIFIER_DELEGATE_TOKEN"] = token_with(env["QM_TOKENS"], "delegate")
    # The requests service asks policy and the Cost API; the notifier asks it.
    env["QM_REQUESTS_POLICY_ADDR"] = policy.addr
    env.setdefault("QM_REQUESTS_USAGE_API_ADDR", env.get("QM_USAGE_API_ADDR", "127.0.0.1:50052"))
    env.setdefault("QM_NOTIFIER_REQUESTS_ADDR", env.get("QM_REQUESTS_ADDR", "127.0.0.1:50053"))
    # The notifier asks the Cost API what drove a threshold crossing.
    env.setdefault("QM_NOTIFIER_USAGE_API_ADDR", env.get("QM_USAGE_API_ADDR", "127.0.0.1:50052"))
    # The demo has no groups: every ask goes to the asker's manager.
    env.setdefault("QM_REQUESTS_RULES", "manager:1:0")
    return env


async def _requests_and_demo(
    dev: DevSettings, env: dict[str, str], child: ChildProcess, traffic: bool
) -> demo.CreditDemo | None:
    """Wait for the requests service (`child`) and say where it is; with demo
    `traffic`, say what it does and make carol's credit request (devtools.demo_requests;
    None without traffic or the tokens it needs)."""
    requests = RequestsSettings.from_env(env)
    await wait_serving(requests.addr, requests.client_tls, child, 60)
    say(f"  credit requests on {requests.addr}: .venv/bin/python -m services.requests.cli")
    if not traffic:
        return None
    say("Demo traffic: three people spend; carol's runaway agent hits the limit.")
    after = dev.demo_approve_after_seconds if dev.demo_auto_approve else None
    made, said = demo.credit_demo(env["QM_TOKENS"], requests.addr, requests.client_tls,
                                  dev.demo_ask_credits, dev.demo_grant_seconds, after)  # fmt: skip
    say(said)
    return made


async def _ready(infra: Infra, policy: PolicySettings, token: str) -> None:
    """Say the system is up only once an event produced now is counted and in policy's
    budget (devtools.ready); when it is not within READY_WITHIN_S, say where it stopped
    (the run goes on: a slow first start may still catch up)."""
    try:
        took = await probe_counted(infra.kafka_bootstrap, policy.addr, policy.client_tls,
                                   token, READY_WITHIN_S)  # fmt: skip
    except NotReady as exc:
        say(f"  NOT ready after {READY_WITHIN_S:g} s: {exc}")
        return
    say(f"  ready: an event produced now was counted and in policy's budget {took:.1f} s "
        f"later (user {PROBE_USER})")  # fmt: skip


async def _work(
    dev: DevSettings, infra: Infra, policy: PolicySettings, env: dict[str, str],
    requests_child: ChildProcess,
) -> tuple[Awaitable[object], demo.CreditDemo | None]:  # fmt: skip
    """What runs until Ctrl-C (the demo traffic, or nothing: said which), and the credit
    request demo the traffic's DENYs start (None without traffic)."""
    gateway = token_with(env["QM_TOKENS"], "gateway")
    await _ready(infra, policy, token_with(env["QM_TOKENS"], "reader") or gateway)
    traffic = bool(dev.demo_traffic and gateway)
    credit_demo = await _requests_and_demo(dev, env, requests_child, traffic)
    if not traffic:
        why = "QM_TOKENS has no gateway token" if dev.demo_traffic else "QM_DEMO_TRAFFIC=0"
        say(f"{why}: no demo traffic. Press Ctrl-C to stop.")
        return asyncio.Event().wait(), None
    say("Press Ctrl-C to stop.\n")
    work = simulator.run(
        infra.kafka_bootstrap, policy.addr, policy.workspace_id,
        tls=policy.client_tls, token=gateway,
        on_deny=credit_demo.denied if credit_demo is not None else None,
    )  # fmt: skip
    return work, credit_demo


class ServiceDied(Exception):
    """A service `make run` started has exited by itself: the run stops (exit status 1)
    rather than go on showing a system with a part missing."""


async def _first_exit(children: list[ChildProcess], every: float = 0.5) -> ServiceDied:
    """Wait until one of `children` exits by itself; then what to tell the person at the
    terminal: which one, its exit status, the end of its log."""
    while True:
        for child in children:
            status = child.poll()
            if status is not None:
                return ServiceDied(
                    f"{child.name} exited by itself (status {status}); the end of "
                    f"{child.log_path}:\n{child.log_tail(20)}"
                )
        await asyncio.sleep(every)


async def _until_first_exit(work: Awaitable[object], children: list[ChildProcess]) -> None:
    """Run `work` (the simulator, or waiting for Ctrl-C) while watching `children`.

    Raises ServiceDied when a child exits first (work is cancelled); an error in
    `work` itself is raised as it is."""
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_first_exit(children))
    try:
        await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
        if job.done():
            job.result()
            return
        raise watch.result()
    finally:
        for task in (job, watch):
            task.cancel()
        await asyncio.gather(job, watch, return_exceptions=True)


async def _main(dev: DevSettings, policy: PolicySettings) -> None:
    """Runs until cancelled (Ctrl-C) or until a service dies (ServiceDied); every
    `finally` on the way out stops what it started."""
    say("Quartermaster: starting PostgreSQL and the Kafka-protocol broker ...")
    with open_infra(dev.run_dir, pg_port=dev.local_pg_port, broker_port=dev.local_broker_port,
                    durable=True, partitions=policy.topic_partitions) as infra:  # fmt: skip
        say(f"  kafka     {infra.kafka_bootstrap} ({infra.kafka_origin})")
        say(f"  postgres  {mask_url(infra.database_url)} ({infra.database_origin})")
        await _seed(policy.workspace_id, dev.demo_limit_credits, infra.database_url)
        say(
            f"  seeded workspace {policy.workspace_id!r} (time zone "
            f"{policy.workspace_timezone}: its days and months, QM_WORKSPACE_TIMEZONE): "
            f"default limit {dev.demo_limit_credits} credits/month (hard), "
            f"{len(simulator.PERSONAS)} people"
        )
        env = _child_env(policy, infra)

        # Every run starts from nothing, its logs too (ChildProcess appends, so that a
        # restarted service keeps one log within a run).
        for old_log in (dev.run_dir / "logs").glob("*.log"):
            old_log.unlink()

        standin, sink = await start_standin(
            dev.slack_standin_port,
            dev.smtp_sink_port,
            dev.slack_interactivity_url,
            env,
            policy.addr,
        )

        def spawn(name: str, module: str) -> ChildProcess:
            argv = [sys.executable, "-m", module]
            return ChildProcess(name, argv, dev.run_dir / "logs" / f"{name}.log", env=env, cwd=ROOT)

        children = [
            spawn("metering", "services.metering"),
            spawn("policy", "services.policy"),
            spawn("cost-api", "services.metering.api"),
            spawn("requests", "services.requests"),
            spawn("notifier", "services.notifier"),
            spawn("ingest", "services.metering.ingest"),
        ]
        requests_child = children[3]
        credit_demo: demo.CreditDemo | None = None
        try:
            for child in children:
                child.start()
                say(f"  started {child.name} (pid {child.pid}), log: {child.log_path}")
            await wait_serving(policy.addr, policy.client_tls, children[1], 60)
            say(f"  policy gRPC serving on {policy.addr} (health + reflection on)")
            if standin is not None:
                say(f"  Slack stand-in: what the notifier sends shows on {standin.url}/"
                    + (" (its e-mails too)" if sink is not None else ""))  # fmt: skip
            api_addr = env.get("QM_USAGE_API_ADDR", "127.0.0.1:50052")
            say(
                f"  Cost API and price catalog on {api_addr}: "
                ".venv/bin/python -m services.metering.cli"
            )
            say(ingest_line(env, policy))
            work, credit_demo = await _work(dev, infra, policy, env, requests_child)
            await _until_first_exit(work, children)
        except ServiceDied as died:
            say(f"\n{died}")  # first, before the shutdown's lines
            raise
        finally:
            if credit_demo is not None:
                await credit_demo.close()
            say("\nStopping ...")
            for child in reversed(children):
                child.stop(timeout=10)
                say(f"  stopped {child.name}")
            if sink is not None:
                sink.stop()
            if standin is not None:
                await standin.stop()
            say("  stopping the broker and PostgreSQL ...")


def main() -> None:
    """Check every service's settings first (a wrong one stops here, named), then run."""
    services = [cls for _, cls in settings_classes()]
    dev = load_or_exit(DevSettings, "make run", *services)
    policy = PolicySettings.from_env()  # valid: checked just above
    busy = taken(listening(_planned_env(), _local_ports(dev)))
    if busy:  # before anything starts: nothing to stop
        sys.stderr.write(f"{busy}\n")
        sys.exit(1)
    telemetry.setup("devstack", "WARNING")

    async def runner() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await _main(dev, policy)
        except asyncio.CancelledError:
            pass
        except ServiceDied:
            say("Stopped everything, as a part of the system had died: fix what its log "
                "says, then `make run` again.")  # fmt: skip
            return 1
        say("Stopped. Bye.")
        return 0

    sys.exit(asyncio.run(runner()))


if __name__ == "__main__":
    main()
