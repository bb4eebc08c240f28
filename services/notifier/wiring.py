"""The one place the notifier's object graph is built: the Postgres pool, the stores,
the directory client, the channels (Slack: real Slack with a bot token, else the local
stand-in at QM_NOTIFIER_SLACK_BASE_URL; e-mail when QM_NOTIFIER_SMTP_HOST is set;
webhooks when QM_NOTIFIER_WEBHOOKS names endpoints), the intake consumer, the senders
(webhooks retried on the Standard Webhooks schedule, services.notifier.retries), the
reconciler, the digester, the backlog gauge, and the Slack interactivity endpoint (with
a signing secret: POST /slack/interactivity on QM_NOTIFIER_INTERACTIVITY_ADDR, or
Socket Mode) whose clicks are decided at the requests service as the clicker. Made
once, in order, each handed what it needs; tests may add channels (`extra_channels`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
from aiohttp import web
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from quartermaster.db import close_pool, service_pool
from quartermaster.directory_client import DirectoryClient
from quartermaster.grpcclient import open_channel
from quartermaster.v1 import requests_pb2_grpc
from services.notifier import intake, retries, slack
from services.notifier.channel import Channel
from services.notifier.drivers import SpendDrivers
from services.notifier.email import EmailChannel
from services.notifier.interactivity import (
    PATH,
    Interactivity,
    connect_socket_mode,
    serve_http,
)
from services.notifier.metrics import Backlog, NotifierMetrics
from services.notifier.plan import EMAIL, WEBHOOK, preference_of
from services.notifier.render import Style
from services.notifier.sender import Digester, Reconciler, Sender
from services.notifier.settings import NotifierSettings
from services.notifier.stores.deliveries import DeliveryStore
from services.notifier.stores.people import PreferenceStore, SlackCopies
from services.notifier.stores.webhooks import WebhookGate
from services.notifier.webhooks import WebhookChannel, parse_endpoints

log = logging.getLogger("qm.notifier")
# The token sent to the local stand-in when no bot token is set (it accepts any).
STANDIN_TOKEN = "xoxb-local-standin"


@dataclass
class RunningNotifier:
    """The started service; `stop` ends it all (a delivery being sent is cut off: its
    claim runs out and the reconciler hands it on, marked unsure)."""

    pool: asyncpg.Pool
    store: DeliveryStore
    consumer: intake.BatchConsumer
    intake: intake.Intake
    sender: Sender
    reconciler: Reconciler
    digester: Digester
    directory: DirectoryClient
    slack: slack.SlackChannel
    tasks: list[asyncio.Task[None]]
    clicks: Clicks | None = None
    webhook: WebhookChannel | None = None
    channels: dict[str, Channel] = field(default_factory=dict)
    drivers: SpendDrivers | None = None

    async def stop(self) -> None:
        self.consumer.stopping = True
        self.sender.stopping = True
        self.reconciler.stopping = True
        self.digester.stopping = True
        if self.clicks is not None:
            await self.clicks.stop()
        for task in self.tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                # A loop that had died (services.notifier.health logged it when it did):
                # the rest is still closed.
                log.warning("the %s loop had ended: %s: %s", task.get_name(),
                            type(exc).__name__, exc)  # fmt: skip
        if self.webhook is not None:
            await self.webhook.close()
        await self.directory.close()
        if self.drivers is not None:
            await self.drivers.close()
        if self.slack.web.session is not None:
            await self.slack.web.session.close()
        await close_pool(self.pool)


def slack_channel(settings: NotifierSettings, copies: slack.Copies) -> slack.SlackChannel:
    """Slack itself with a bot token; the stand-in at slack_base_url otherwise.
    ValueError when neither is set (nowhere to send)."""
    token = settings.slack_bot_token.get_secret_value()
    if not token and not settings.slack_base_url:
        raise ValueError(
            "QM_NOTIFIER_SLACK_BOT_TOKEN or QM_NOTIFIER_SLACK_BASE_URL must be set"
            " (the local stand-in's URL: `python -m devtools.slack_standin`)"
        )
    web = slack.client(token or STANDIN_TOKEN, settings.slack_base_url)
    return slack.SlackChannel(web, copies, settings.slack_pace_seconds)


@dataclass
class Clicks:
    """The Slack interactivity endpoint as started: `url` (the HTTP endpoint's, "" under
    Socket Mode), and what `stop` ends."""

    interactivity: Interactivity
    requests: grpc.aio.Channel
    url: str = ""
    runner: web.AppRunner | None = None
    socket_mode: SocketModeClient | None = None

    async def stop(self) -> None:
        """Stop taking clicks, finish those being acted on, close the channel."""
        if self.runner is not None:
            await self.runner.cleanup()
        if self.socket_mode is not None:
            await self.socket_mode.close()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
        await self.interactivity.drain()
        await self.requests.close(None)


async def start_clicks(
    settings: NotifierSettings, directory: DirectoryClient, web_client: AsyncWebClient
) -> Clicks | None:
    """The interactivity endpoint when a signing secret is set (or Socket Mode is on),
    else None. Clicks are decided at QM_NOTIFIER_REQUESTS_ADDR with the delegate token
    as the clicker. OSError when the endpoint's address is taken."""
    secret = settings.slack_signing_secret.get_secret_value()
    if not secret and not settings.slack_socket_mode:
        return None
    channel = open_channel(settings.requests_addr, settings.client_tls)
    handler = Interactivity(
        # Socket Mode verifies no signatures (the app token authenticates the socket).
        signing_secret=secret or secrets.token_hex(32),
        people=intake.ClickPeople(directory),
        requests=requests_pb2_grpc.RequestServiceStub(channel),
        delegate_token=settings.delegate_token.get_secret_value(), slack=web_client,
        decide_timeout=settings.decide_timeout_seconds,
    )  # fmt: skip
    clicks = Clicks(handler, channel)
    if settings.slack_socket_mode:
        token = settings.slack_app_token.get_secret_value()
        clicks.socket_mode = await connect_socket_mode(handler, token, web_client)
        log.info("Slack interactivity over Socket Mode")
        return clicks
    host, _, port = settings.interactivity_addr.rpartition(":")
    clicks.runner = await serve_http(handler, host.strip("[]"), int(port))
    bound = clicks.runner.addresses[0]
    clicks.url = f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{bound[1]}{PATH}"
    log.info("Slack interactivity on %s", clicks.url)
    return clicks


def channels_of(
    settings: NotifierSettings, slack_: slack.SlackChannel
) -> tuple[dict[str, Channel], WebhookChannel | None, dict[str, str]]:
    """The channels the settings configure: Slack always, e-mail with an SMTP host,
    webhooks with endpoints (the channel and the endpoints, name → URL)."""
    channels: dict[str, Channel] = {"slack": slack_}
    if settings.smtp_host:
        channels[EMAIL] = EmailChannel(settings)
    endpoints = parse_endpoints(settings.webhooks.get_secret_value())
    hook = WebhookChannel(settings) if endpoints else None
    if hook is not None:
        channels[WEBHOOK] = hook
    return channels, hook, endpoints


async def start(
    settings: NotifierSettings, extra_channels: Mapping[str, Channel] | None = None
) -> RunningNotifier:
    """Connect, build and start the consumer, senders, reconciler, digester, backlog
    gauge and interactivity endpoint. Raises OSError or an asyncpg error when
    PostgreSQL can't be reached (or the endpoint's address is taken); ValueError when
    Slack is not configured (see slack_channel)."""
    pool = await service_pool(settings, max_size=settings.senders + 4)
    ws = settings.workspace_id
    sender_id = f"{socket.gethostname()}:{os.getpid()}"
    store = DeliveryStore(pool, ws, sender_id)
    # What `preferences show` reports as in force (the CLI's own shell may differ).
    await PreferenceStore(pool, ws).record_default(preference_of(settings.default_channels),
                                                   sender_id)  # fmt: skip
    slack_ = slack_channel(settings, SlackCopies(pool, ws))
    channels, hook, endpoints = channels_of(settings, slack_)
    channels.update(extra_channels or {})
    gate = WebhookGate(pool, ws)
    metrics = NotifierMetrics()
    directory = DirectoryClient(
        settings.directory_addr, source="QM_DIRECTORY_ADDR", tls=settings.client_tls,
        token=settings.directory_token,
    )  # fmt: skip
    style = Style(settings.ask_url, settings.timezone)
    drivers = None
    if settings.usage_api_addr:
        drivers = SpendDrivers(settings.usage_api_addr, tls=settings.client_tls,
                               token=settings.directory_token, tz=settings.timezone)  # fmt: skip
    take = intake.Intake(
        store, PreferenceStore(pool, ws), intake.People(directory),
        preference_of(settings.default_channels), channels, style, webhooks=endpoints, gate=gate,
        drivers=drivers,
    )  # fmt: skip
    consumer = intake.BatchConsumer(take, settings.kafka_bootstrap, settings.group_id,
                                    settings.session_timeout_seconds)  # fmt: skip
    sender = Sender(
        store, channels, batch=settings.senders, lease_seconds=settings.claim_seconds,
        poll_seconds=settings.poll_seconds, max_attempts=settings.max_attempts,
        hold_after_send=settings.hold_after_send, schedules={WEBHOOK: retries.next_delay},
        gate=gate, observer=metrics,
        # Slack paces each conversation: one send at a time per person there.
        serial=("slack",) if settings.slack_pace_seconds > 0 else (),
    )  # fmt: skip
    reconciler = Reconciler(store, settings.reconcile_seconds)
    digester = Digester(store, take, settings.digest_hour, settings.timezone)
    backlog = Backlog(store, metrics, every=max(settings.reconcile_seconds, 1.0))
    # Before the loops start: an endpoint whose address is taken stops the start here.
    clicks = await start_clicks(settings, directory, slack_.web)
    loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "consumer": consumer.run, "sender": sender.run, "reconciler": reconciler.run,
        "digester": digester.run, "backlog": backlog.run,
    }  # fmt: skip
    # Named: /livez and /healthz (services.notifier.health) say which one ended.
    tasks = [asyncio.create_task(run(), name=name) for name, run in loops.items()]
    log.info("notifier %s running for workspace %s: channels %s", sender_id, ws,
             ", ".join(sorted(channels)))  # fmt: skip
    return RunningNotifier(pool, store, consumer, take, sender, reconciler, digester,
                           directory, slack_, tasks, clicks, hook, channels, drivers)  # fmt: skip
