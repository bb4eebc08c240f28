"""Channel preferences and webhook endpoints from the CLI, against the real PostgreSQL:
what `preferences set/show/clear` writes is what planning reads (PreferenceStore.of),
and `webhooks enable` opens an endpoint a 410 closed."""

from __future__ import annotations

import asyncio
import io
import uuid

import asyncpg
import pytest

from devtools.localinfra.stack import Infra
from services.notifier import cli
from services.notifier.plan import Preference, chosen, describe
from services.notifier.stores.people import PreferenceStore
from services.notifier.stores.webhooks import WebhookGate


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


@pytest.mark.infra
async def test_preferences_set_show_clear_are_what_planning_reads(
    infra: Infra, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("QM_DATABASE_URL", infra.database_url)
    monkeypatch.setenv("QM_WORKSPACE_ID", ws)
    monkeypatch.setenv("QM_NOTIFIER_DEFAULT_CHANNELS", "both")
    assert await asyncio.to_thread(run, "preferences", "set", "ann", "email") == (0, "ann: email\n")
    assert await asyncio.to_thread(run, "preferences", "set", "mo", "slack", "--digest") == (
        0, "mo: slack + digest\n")  # fmt: skip
    assert await asyncio.to_thread(run, "preferences", "set", "lee", "digest") == (
        0, "lee: both + digest\n")  # fmt: skip  # the workspace default's channels
    store = PreferenceStore(pool, ws)
    assert await store.of(["ann", "mo", "lee", "zed"]) == {
        "ann": Preference(("email",)),
        "mo": Preference(("slack",), digest=True),
        "lee": Preference(("slack", "email"), digest=True),
    }
    code, shown = await asyncio.to_thread(run, "preferences", "show")
    assert (code, shown.splitlines()) == (0, [
        "workspace default: both (QM_NOTIFIER_DEFAULT_CHANNELS here: no notifier has started"
        " in this workspace)",
        "ann: email", "lee: both + digest", "mo: slack + digest",
    ])  # fmt: skip
    assert await asyncio.to_thread(run, "preferences", "clear", "ann") == (
        0, "ann: the workspace default (both)\n")  # fmt: skip
    assert (await asyncio.to_thread(run, "preferences", "clear", "ann"))[0] == 1
    code, shown = await asyncio.to_thread(run, "preferences", "show", "ann", "mo")
    assert shown.splitlines()[1:] == ["mo: slack + digest", "ann: the workspace default"]
    with pytest.raises(SystemExit) as bad:
        await asyncio.to_thread(run, "preferences", "set", "ann", "pager")
    assert bad.value.code == 2
    # A notifier started with another default: that one is in force, whatever this
    # shell's QM_NOTIFIER_DEFAULT_CHANNELS says (make run's is "both", a shell's unset).
    await store.record_default(Preference(("email",)), "host-a:41")
    code, shown = await asyncio.to_thread(run, "preferences", "show")
    assert shown.splitlines()[0].startswith(
        "workspace default: email (the running notifier's, host-a:41 since "
    ), shown
    assert await asyncio.to_thread(run, "preferences", "set", "zed", "digest") == (
        0, "zed: email + digest\n")  # fmt: skip


@pytest.mark.infra
async def test_webhooks_lists_endpoints_and_enables_a_disabled_one(
    infra: Infra, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = f"ws-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("QM_DATABASE_URL", infra.database_url)
    monkeypatch.setenv("QM_WORKSPACE_ID", ws)
    monkeypatch.setenv("QM_NOTIFIER_WEBHOOKS", "ops=https://hooks.example/a?token=s3cret,"
                       "audit=https://hooks.example/b")  # fmt: skip
    gate = WebhookGate(pool, ws)
    await gate.close("webhook", "ops", "HTTP 410 gone")
    assert await gate.closed("webhook", "ops") == "endpoint ops is disabled: HTTP 410 gone"
    assert await gate.closed("slack", "ops") is None  # only webhooks are closed
    assert await asyncio.to_thread(run, "webhooks") == (
        0, "audit: enabled\nops: disabled: HTTP 410 gone\n")  # fmt: skip  # no URL shown
    assert await asyncio.to_thread(run, "webhooks", "enable", "ops") == (
        0, "webhook endpoint ops enabled: notices are posted to it again\n")  # fmt: skip
    assert await gate.closed("webhook", "ops") is None
    assert (await asyncio.to_thread(run, "webhooks", "enable", "ops"))[0] == 1


@pytest.mark.infra
async def test_enabling_an_endpoint_that_is_not_configured_names_those_that_are(
    infra: Infra, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QM_DATABASE_URL", infra.database_url)
    monkeypatch.setenv("QM_WORKSPACE_ID", f"ws-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv(
        "QM_NOTIFIER_WEBHOOKS", "ops=https://hooks.example/a,audit=https://b.example/"
    )
    assert (await asyncio.to_thread(run, "webhooks", "enable", "foo"))[0] == 1
    said = capsys.readouterr().err
    assert "no webhook endpoint 'foo': QM_NOTIFIER_WEBHOOKS names audit, ops" in said
    assert "example" not in said  # no URL (they may carry credentials)


def test_choices_read_as_preferences() -> None:
    default = Preference(("slack",))
    assert chosen("both", False, default) == Preference(("slack", "email"))
    assert chosen("digest", False, default) == Preference(("slack",), digest=True)
    assert describe(chosen("email", True, default)) == "email + digest"
    with pytest.raises(ValueError, match="'sms': expected one of slack, email, both, digest"):
        chosen("sms", False, default)
