"""What people write is shown as written, in every channel's form (breaker #6): in
Slack's mrkdwn `&`, `<`, `>` are escaped, so a justification, a deny reason, a name or
a product can't become a link, a mention or an @here; every Block Kit piece stays
within Slack's limits; e-mail HTML is escaped and a webhook's JSON carries the text
as it is (no I/O: the rendering is pure)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime

from quartermaster.money import MICROS_PER_CREDIT as C
from services.notifier.audience import Addressee, Intent, Kind, RequestFact, Role, Share
from services.notifier.blocks import (
    BLOCK_ID_MAX,
    HEADER_TEXT_MAX,
    MAX_BLOCKS,
    SECTION_TEXT_MAX,
    escape,
    mrkdwn,
)
from services.notifier.channel import Message, Recipient
from services.notifier.email import build_email
from services.notifier.render import (
    Style,
    render_ask,
    render_decided,
    render_edit,
    render_event,
    render_intent,
)
from services.notifier.schedule import Queued, digests

NOW = datetime(2026, 11, 16, tzinfo=UTC)
ATTACK = "<https://evil.example/sso|Approve in Quartermaster (required)> <!here> <@UALICE>"
SAFE = escape(ATTACK)
STYLE = Style()


def fact(**changes: object) -> RequestFact:
    base = RequestFact(
        event_id="r-1:1:request.created", type="request.created", request_id="r-1", version=1,
        requester="carol", amount_micros=10 * C, granted_micros=10 * C, duration_seconds=3600,
        justification=ATTACK, actor="alice", reason=ATTACK, approvers=("alice",),
        occurred_at=NOW, used_micros=5 * C, limit_micros=50 * C, period="month",
        by_product=(Share(ATTACK, 3 * C),), by_model=(Share("<!channel>", 2 * C),),
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def mrkdwn_texts(message: Message) -> Iterator[str]:
    for block in message.blocks:
        text = block.get("text")
        if isinstance(text, dict) and text.get("type") == "mrkdwn":
            yield str(text["text"])


def assert_inert(message: Message) -> None:
    """No mrkdwn text of `message` holds a raw < or > (a link, a mention, @here)."""
    texts = list(mrkdwn_texts(message))
    assert texts
    for text in texts:
        assert not set("<>") & set(text), text
        assert len(text) <= SECTION_TEXT_MAX
    assert len(message.blocks) <= MAX_BLOCKS


def test_a_justification_with_a_link_and_mentions_is_shown_as_text_to_approvers() -> None:
    message = render_ask(fact(), Addressee("alice", Role.APPROVER), "<@UCEO> Carol", STYLE)
    assert_inert(message)
    texts = list(mrkdwn_texts(message))
    assert texts[0] == "*&lt;@UCEO&gt; Carol asks for 10.00 credits*"
    assert texts[1] == f"For 1 hour: {SAFE}"
    assert f"By product: {SAFE} 3.00" in texts
    assert "By model: &lt;!channel&gt; 2.00" in texts
    # plain forms keep the text as written: e-mail escapes it as HTML, JSON as JSON
    assert ATTACK in message.text
    assert "&lt;https://evil.example/sso|Approve" in message.html
    assert ATTACK not in message.html
    assert message.payload["reason"] == ATTACK


def test_a_deny_reason_and_names_are_shown_as_text_to_the_requester_and_in_edits() -> None:
    denied = fact(type="request.denied", event_id="r-1:2:request.denied")
    told = render_decided(denied, "<!everyone> & co", STYLE)
    assert_inert(told)
    assert list(mrkdwn_texts(told))[1] == (
        f"Denied by &lt;!everyone&gt; &amp; co at 2026-11-16 00:00 UTC ({SAFE})."
    )
    edit = render_edit(denied, "<@U1>", "<@U2>", STYLE)
    assert_inert(edit)
    assert next(iter(mrkdwn_texts(edit))) == "*&lt;@U1&gt;'s request for 10.00 credits*"
    event = render_event(denied, "<@U1>", "<@U2>", STYLE)
    assert json.loads(json.dumps(dict(event.payload)))["reason"] == ATTACK


def test_threshold_and_anomaly_facts_from_an_intent_are_shown_as_text() -> None:
    threshold = Intent(
        "t:1", Kind.THRESHOLD, "ann", "<!here> pool over budget", "",
        {"subject": "pool:p", "used_micros": str(40 * C), "limit_micros": str(50 * C),
         "period_key": "<2026-11>", "percent": "<!here>", "top_product": ATTACK,
         "top_model": "a&b", "top_product_micros": "x"}, NOW,
    )  # fmt: skip
    message = render_intent(threshold, Addressee("mo", Role.MANAGER), "<@UPOOL>", STYLE)
    assert_inert(message)
    assert message.blocks[0]["text"] == {  # a plain_text header: no escaping, ≤ 150
        "type": "plain_text", "text": "<@UPOOL>: <!here> pool over budget",
    }  # fmt: skip
    assert f"Most of it: product {SAFE}, model a&amp;b." in list(mrkdwn_texts(message))
    anomaly = Intent("a:1", Kind.ANOMALY, "bob", "x" * 400, ATTACK, {}, NOW)
    message = render_intent(anomaly, Addressee("bob", Role.SELF), "Bob", STYLE)
    assert_inert(message)
    header = message.blocks[0]["text"]
    assert isinstance(header, dict)
    assert len(header["text"]) == HEADER_TEXT_MAX


def test_long_texts_are_cut_within_slacks_limits_never_inside_an_escape() -> None:
    message = render_ask(fact(justification="&" * 2000), Addressee("a", Role.APPROVER), "C",
                         STYLE)  # fmt: skip
    assert_inert(message)
    text = list(mrkdwn_texts(message))[1]
    assert text.endswith("&amp;…")
    assert len(text) <= SECTION_TEXT_MAX
    assert mrkdwn("a<b", 4) == "a…"  # "a&lt;b" cut, not "a&l…"
    assert mrkdwn("ab", 2) == "ab"


def test_a_256_character_request_id_keeps_the_block_id_within_255() -> None:
    long_id = "x" * 256
    message = render_ask(fact(request_id=long_id), Addressee("a", Role.APPROVER), "C", STYLE)
    [actions] = [b for b in message.blocks if b["type"] == "actions"]
    assert len(str(actions["block_id"])) <= BLOCK_ID_MAX
    assert str(actions["block_id"]).startswith("decide:#")
    short = render_ask(fact(), Addressee("a", Role.APPROVER), "C", STYLE)
    assert [b["block_id"] for b in short.blocks if b["type"] == "actions"] == ["decide:r-1"]
    other = render_ask(fact(request_id="y" * 256), Addressee("a", Role.APPROVER), "C", STYLE)
    assert other.blocks[-1]["block_id"] != actions["block_id"]


def test_a_digest_shows_subjects_as_text_and_stays_within_50_blocks() -> None:
    waiting = [Queued("mo", f"k{i}", Kind.ANOMALY.value, f"<!here> {i}", ATTACK) for i in range(80)]
    digest = digests(waiting, date(2026, 11, 16))["mo"]
    assert_inert(digest)
    assert len(digest.blocks) == MAX_BLOCKS
    assert list(mrkdwn_texts(digest))[-1] == "… and 32 more"
    assert "&lt;!here&gt; 0" in digest.html
    assert "<!here>" not in digest.html


def test_an_email_subject_and_name_with_line_breaks_are_one_line() -> None:
    message = Message("k", "test", "a\r\nBcc: eve@example.com", "text", html="<p>x</p>")
    mail = build_email("qm@example.com", Recipient("u", "u@example.com", "U\nBcc: x@y"),
                       message, "1")  # fmt: skip
    assert mail["Subject"] == "a Bcc: eve@example.com"
    assert mail["Bcc"] is None
    assert "\n" not in str(mail["To"])
