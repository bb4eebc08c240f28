"""The notifier's pure domain: who hears what, what their message says, the retry
schedule and the digest (no I/O)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from quartermaster.money import MICROS_PER_CREDIT as C
from services.notifier.audience import Intent, Kind, Person, RequestFact, Share
from services.notifier.mapping import message_json, message_of
from services.notifier.plan import (
    APPROVERS_COPIES,
    Audience,
    Preference,
    plan_digest,
    plan_intent,
    plan_request,
    preference_of,
)
from services.notifier.render import Style, duration, runs_out_at
from services.notifier.schedule import (
    MAX_DELAY_S,
    Queued,
    digest_cut,
    digests,
    gives_up,
    retry_delay,
)

NOW = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)  # half of November gone
PEOPLE = {
    "ann": Person("ann", "ann@example.com", "Ann", "U-ANN", "mo"),
    "bob": Person("bob", "bob@example.com", "Bob", "", "mo"),
    "mo": Person("mo", "mo@example.com", "Mo", "U-MO", ""),
}
STYLE = Style("https://qm.example/ask")


def who(
    prefs: dict[str, Preference] | None = None, available: tuple[str, ...] = ("slack",)
) -> Audience:
    return Audience(PEOPLE, prefs or {}, Preference(("slack",)), available)


def threshold(user: str = "ann", subject: str = "user:ann", **data: str) -> Intent:
    return Intent(
        dedupe_key=f"threshold:{subject}:2026-11:80:{user}", kind=Kind.THRESHOLD,
        recipient_user_id=user, subject="You have used 80% of your monthly AI budget",
        body="", created_at=NOW,
        data={"subject": subject, "percent": "80", "used_micros": str(40 * C),
              "limit_micros": str(50 * C), "period_key": "2026-11", **data},
    )  # fmt: skip


def anomaly(user: str = "bob") -> Intent:
    return Intent(f"anomaly:user:{user}:1", Kind.ANOMALY, user, "Unusual AI spend",
                  "Over the last 10 minutes you spent at 90 credits an hour", {}, NOW)  # fmt: skip


def test_a_person_hears_of_their_own_crossing_with_the_numbers_to_act_on() -> None:
    plan = plan_intent(threshold(top_product="chat", top_model="gpt-5"), who(), STYLE)
    [d] = plan.deliveries
    assert (d.recipient, d.channel, d.address) == ("ann", "slack", "U-ANN")
    text = d.message.text
    assert "Used 40.00 of 50.00 credits in 2026-11 (80 %)" in text
    assert "product chat, model gpt-5" in text
    # 40 credits in 15 days: the last 10 run out 3.75 days later
    assert "runs out 2026-11-19 18:00" in text
    assert "https://qm.example/ask" in text
    assert d.message.dedupe_key == threshold().dedupe_key


def test_runs_out_is_none_past_the_period_or_with_nothing_spent() -> None:
    utc = ZoneInfo("UTC")
    assert runs_out_at(1 * C, 50 * C, "2026-11", NOW, utc) is None  # not this month
    assert runs_out_at(0, 50 * C, "2026-11", NOW, utc) is None
    assert runs_out_at(60 * C, 50 * C, "2026-11", NOW, utc) is None
    assert runs_out_at(40 * C, 50 * C, "2026-W47", NOW, utc) is None  # not the week of NOW


def test_an_anomaly_reaches_the_person_and_their_manager_who_may_take_a_digest() -> None:
    plan = plan_intent(anomaly(), who(), STYLE)
    assert [(d.recipient, d.address) for d in plan.deliveries] == [
        ("bob", "bob@example.com"),  # no Slack id: looked up by e-mail
        ("mo", "U-MO"),
    ]
    assert plan.deliveries[1].message.subject.startswith("Bob: ")
    digesting = plan_intent(anomaly(), who({"mo": Preference(("slack",), digest=True)}), STYLE)
    assert [d.recipient for d in digesting.deliveries] == ["bob"]
    assert [(q.user_id, q.dedupe_key) for q in digesting.digest] == [("mo", "anomaly:user:bob:1")]


def test_pool_admins_hear_of_pools_as_managers() -> None:
    plan = plan_intent(threshold("mo", "pool:ml"), who(), STYLE)
    [d] = plan.deliveries
    assert d.recipient == "mo"
    assert d.message.payload["role"] == "manager"  # so a digest may take it


def test_preferences_pick_channels_and_the_default_covers_the_rest() -> None:
    both = who({"ann": preference_of("both")}, available=("slack", "email"))
    assert [(d.channel, d.address) for d in plan_intent(threshold(), both, STYLE).deliveries] == [
        ("slack", "U-ANN"), ("email", "ann@example.com"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="expected slack, email or both"):
        preference_of("pigeon")


def request(type_: str, approvers: tuple[str, ...] = ("mo",), actor: str = "ann") -> RequestFact:
    return RequestFact(
        event_id=f"r-1:2:{type_}", type=type_, request_id="r-1", version=2, requester="ann",
        amount_micros=20 * C, granted_micros=15 * C, duration_seconds=86_400,
        justification="eval run", actor=actor, reason="", approvers=approvers,
        occurred_at=NOW, used_micros=45 * C, limit_micros=50 * C, period="month",
        by_product=(Share("chat", 30 * C), Share("api", 15 * C)),
        by_model=(Share("gpt-5", 45 * C),), runs_out_at=NOW + timedelta(days=1),
    )  # fmt: skip


def test_approvers_get_buttons_carrying_the_request_and_its_version() -> None:
    [d] = plan_request(request("request.created"), who(), STYLE).deliveries
    assert (d.recipient, d.message.request_id) == ("mo", "r-1")
    [actions] = [b for b in d.message.blocks if b["type"] == "actions"]
    values = {e["action_id"]: json.loads(e["value"]) for e in actions["elements"]}  # type: ignore[attr-defined]
    assert values == {"approve": {"request_id": "r-1", "version": 2},
                      "deny": {"request_id": "r-1", "version": 2}}  # fmt: skip
    assert "By product: chat 30.00, api 15.00" in d.message.text


def test_an_ask_says_its_length_as_a_person_would_and_a_spent_budget_as_spent() -> None:
    """A 120 s grant read "For 0.0333333 hours", and a budget already used up "runs
    out" at an instant in the past (newcomer pass)."""
    fact = request("request.created")
    spent = replace(fact, duration_seconds=120, used_micros=55 * C)
    [d] = plan_request(spent, who(), STYLE).deliveries
    assert "For 2 minutes: eval run" in d.message.text
    assert "The budget has run out." in d.message.text
    assert "runs out" not in d.message.text
    [d] = plan_request(fact, who(), STYLE).deliveries
    assert "For 1 day: eval run" in d.message.text
    assert "At this rate it runs out 2026-11-17 00:00 UTC." in d.message.text
    assert [duration(s) for s in (30, 120, 3_600, 5_400, 172_800)] == [
        "0.5 minutes", "2 minutes", "1 hour", "1.5 hours", "2 days",
    ]  # fmt: skip
    assert "python -m services.requests.cli create" in Style().ask()


def test_a_decision_tells_the_requester_and_edits_every_approver_copy() -> None:
    out = plan_request(request("request.approved", approvers=(), actor="mo"), who(), STYLE)
    assert [(d.recipient, d.message.edit) for d in out.deliveries] == [
        ("ann", False), (APPROVERS_COPIES, True),
    ]  # fmt: skip
    told, edit = out.deliveries
    assert "Approved by Mo at 2026-11-16 00:00 UTC: 15.00 credits" in told.message.text
    assert not [b for b in edit.message.blocks if b["type"] == "actions"]


def test_reminders_go_to_approvers_never_to_the_requester() -> None:
    out = plan_request(request("request.reminded", approvers=("mo", "ann")), who(), STYLE)
    assert [d.recipient for d in out.deliveries] == ["mo"]
    assert out.deliveries[0].message.subject.startswith("Reminder: ")
    assert plan_request(request("request.voted"), who(), STYLE).deliveries == []


def test_a_message_survives_its_row() -> None:
    [d] = plan_request(request("request.created"), who(), STYLE).deliveries
    assert message_of(message_json(d.message)) == d.message


def test_retries_grow_to_an_hour_and_honour_retry_after() -> None:
    assert [retry_delay(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert retry_delay(40) == MAX_DELAY_S
    assert retry_delay(1, retry_after_s=30) == 30.0
    assert gives_up(8, 8)
    assert not gives_up(7, 8)
    with pytest.raises(ValueError, match="attempts"):
        retry_delay(0)


def test_a_digest_is_one_message_a_person_a_day_anomalies_first() -> None:
    queued = [
        Queued("mo", "threshold:user:bob:2026-11:80:mo", "threshold_crossed", "Bob: 80%", "a"),
        Queued("mo", "anomaly:user:ann:1", "anomaly", "Ann: unusual", "b"),
        Queued("lu", "anomaly:user:cy:1", "anomaly", "Cy: unusual", "c"),
    ]
    out = digests(queued, date(2026, 11, 16))
    assert sorted(out) == ["lu", "mo"]
    assert out["mo"].dedupe_key == "digest:mo:2026-11-16"
    assert out["mo"].text.splitlines()[1:] == ["• Ann: unusual: b", "• Bob: 80%: a"]


def test_the_digest_hour_is_today_once_past_else_yesterday_in_the_workspace_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    at = datetime(2026, 11, 16, 7, 30, tzinfo=UTC)  # 08:30 in Berlin
    assert digest_cut(at, 8, berlin) == datetime(2026, 11, 16, 7, 0, tzinfo=UTC)
    assert digest_cut(at, 9, berlin) == datetime(2026, 11, 15, 8, 0, tzinfo=UTC)


def test_a_digest_goes_to_the_manager_by_their_channels() -> None:
    queued = [Queued("mo", "anomaly:user:bob:1", "anomaly", "Bob: unusual", "b")]
    plan = plan_digest(queued, date(2026, 11, 16), who({"mo": preference_of("both")},
                       available=("slack", "email")), NOW)  # fmt: skip
    assert [(d.recipient, d.channel, d.dedupe_key) for d in plan.deliveries] == [
        ("mo", "slack", "digest:mo:2026-11-16"), ("mo", "email", "digest:mo:2026-11-16"),
    ]  # fmt: skip


def test_every_webhook_endpoint_hears_of_every_intent_and_request_event_once() -> None:
    hooks = {"ops": "https://ops.example/in", "audit": "https://audit.example/in?t=x"}
    everyone = Audience(PEOPLE, {}, Preference(("slack",)), ("slack", "webhook"), hooks)
    intent_plan = plan_intent(threshold(), everyone, STYLE)
    hooked = [(d.recipient, d.channel, d.address) for d in intent_plan.deliveries
              if d.channel == "webhook"]  # fmt: skip
    assert hooked == [("audit", "webhook", hooks["audit"]), ("ops", "webhook", hooks["ops"])]
    payload = intent_plan.deliveries[-1].message.payload
    assert (payload["type"], payload["recipient_user_id"]) == ("threshold_crossed", "ann")
    for type_ in ("request.created", "request.voted", "request.approved", "request.ended"):
        hook = [d for d in plan_request(request(type_), everyone, STYLE).deliveries
                if d.channel == "webhook"]  # fmt: skip
        assert [d.recipient for d in hook] == ["audit", "ops"], type_
        assert hook[0].message.payload["type"] == type_
        assert hook[0].message.payload["request_id"] == "r-1"
        assert hook[0].dedupe_key == f"r-1:2:{type_}"
    # no endpoints (or all disabled): no webhook deliveries
    assert all(d.channel != "webhook" for d in plan_intent(threshold(), who(), STYLE).deliveries)
