"""Builders for the requests domain tests: a routed request on a controllable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from quartermaster.money import MICROS_PER_CREDIT as C
from services.requests import machine
from services.requests.machine import Outcome, Request
from services.requests.routing import People, Source, StepRule, route

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
RULES = (
    StepRule(Source.MANAGER, 0, 1),
    StepRule(Source.GROUP_ADMINS, 50 * C, 1),
    StepRule(Source.WORKSPACE_ADMINS, 500 * C, 1),
)
PEOPLE = People(
    {
        Source.MANAGER: (("mia",), ("max",), ("mona",)),
        Source.GROUP_ADMINS: (("gus", "gia"), ("gil",)),
        Source.WORKSPACE_ADMINS: (("wes", "wen"),),
    }
)


def new_request(
    credits: int = 20,
    *,
    requester: str = "rae",
    people: People = PEOPLE,
    rules: tuple[StepRule, ...] = RULES,
    fallback: str = "",
    pending_for: timedelta = timedelta(days=7),
    now: datetime = T0,
    hours: int = 24,
) -> Request:
    """A pending request of `credits` for `hours`, routed by `rules` over `people`."""
    steps = route(credits * C, requester, people, rules, fallback)
    out = machine.create(
        request_id="cr-1", workspace_id="ws", requester=requester, amount_micros=credits * C,
        duration_seconds=hours * 3600, justification="eval run", steps=steps, now=now,
        pending_for=pending_for,
    )  # fmt: skip
    return out.request


def approve(req: Request, actor: str, at: datetime = T0, **kw: int) -> Outcome:
    return machine.decide(req, actor, True, req.version, at, "ok", **kw)  # type: ignore[arg-type]
