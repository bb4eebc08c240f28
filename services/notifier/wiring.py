"""The one place the notifier's object graph is built: the Postgres pool, the stores,
the directory client, the Slack channel (real Slack with a bot token, else the local
stand-in at QM_NOTIFIER_SLACK_BASE_URL), the intake consumer, the senders and the
reconciler. Made once, in order, each handed what it needs. Other channels (e-mail,
webhooks) join through `extra_channels`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from quartermaster.db import connect_pool
from quartermaster.directory_client import DirectoryClient
from services.notifier import intake, slack
from services.notifier.channel import Channel
from services.notifier.plan import preference_of
from services.notifier.render import Style
from services.notifier.sender import Digester, Reconciler, Sender
from services.notifier.settings import NotifierSettings
from services.notifier.stores.deliveries import DeliveryStore
from services.notifier.stores.people import PreferenceStore, SlackCopies

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

    async def stop(self) -> None:
        self.consumer.stopping = True
        self.sender.stopping = True
        self.reconciler.stopping = True
        self.digester.stopping = True
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.directory.close()
        if self.slack.web.session is not None:
            await self.slack.web.session.close()
        await self.pool.close()


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


async def start(
    settings: NotifierSettings, extra_channels: Mapping[str, Channel] | None = None
) -> RunningNotifier:
    """Connect, build and start the consumer, senders and reconciler. Raises OSError or
    an asyncpg error when PostgreSQL can't be reached; ValueError when Slack is not
    configured (see slack_channel)."""
    pool = await connect_pool(settings.database_url, max_size=settings.senders + 4)
    ws = settings.workspace_id
    sender_id = f"{socket.gethostname()}:{os.getpid()}"
    store = DeliveryStore(pool, ws, sender_id)
    slack_ = slack_channel(settings, SlackCopies(pool, ws))
    channels: dict[str, Channel] = {"slack": slack_}
    channels.update(extra_channels or {})
    directory = DirectoryClient(
        settings.directory_addr, source="QM_DIRECTORY_ADDR", tls=settings.client_tls,
        token=settings.directory_token,
    )  # fmt: skip
    style = Style(settings.ask_url, settings.timezone)
    take = intake.Intake(
        store, PreferenceStore(pool, ws), intake.People(directory),
        preference_of(settings.default_channels), channels, style,
    )  # fmt: skip
    consumer = intake.BatchConsumer(take, settings.kafka_bootstrap, settings.group_id,
                                    settings.session_timeout_seconds)  # fmt: skip
    sender = Sender(
        store, channels, batch=settings.senders, lease_seconds=settings.claim_seconds,
        poll_seconds=settings.poll_seconds, max_attempts=settings.max_attempts,
        hold_after_send=settings.hold_after_send,
    )  # fmt: skip
    reconciler = Reconciler(store, settings.reconcile_seconds)
    digester = Digester(store, take, settings.digest_hour, settings.timezone)
    tasks = [asyncio.create_task(t.run()) for t in (consumer, sender, reconciler, digester)]
    log.info("notifier %s running for workspace %s: channels %s", sender_id, ws,
             ", ".join(sorted(channels)))  # fmt: skip
    return RunningNotifier(
        pool, store, consumer, take, sender, reconciler, digester, directory, slack_, tasks
    )
