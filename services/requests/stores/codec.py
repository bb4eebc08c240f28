"""Rows of schema `requests` to and from the domain's types (steps and standing are
kept as jsonb: they are read and written whole with their request)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from services.requests.machine import Entry, Request, State, Step
from services.requests.standing import PastRequest, Standing


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def steps_json(steps: tuple[Step, ...]) -> str:
    return json.dumps([
        {"name": s.name, "approvers": s.approvers, "required": s.required,
         "started_at": s.started_at.isoformat(), "approved_by": s.approved_by,
         "reminded": s.reminded, "escalations": s.escalations, "chain": s.chain}
        for s in steps
    ])  # fmt: skip


def steps_of(raw: str) -> tuple[Step, ...]:
    return tuple(
        Step(name=d["name"], approvers=tuple(d["approvers"]), required=d["required"],
             started_at=datetime.fromisoformat(d["started_at"]),
             approved_by=tuple(d["approved_by"]), reminded=d["reminded"],
             escalations=d["escalations"], chain=tuple(tuple(lv) for lv in d["chain"]))
        for d in json.loads(raw)
    )  # fmt: skip


def standing_json(s: Standing) -> str:
    return json.dumps({
        "used_micros": s.used_micros, "limit_micros": s.limit_micros, "period": s.period,
        "by_product": s.by_product, "by_model": s.by_model, "burn_7d_micros": s.burn_7d_micros,
        "runs_out_at": s.runs_out_at.isoformat() if s.runs_out_at else None,
        "history": [{"request_id": h.request_id, "amount_micros": h.amount_micros,
                     "state": h.state, "created_at": h.created_at.isoformat(),
                     "granted_micros": h.granted_micros} for h in s.history],
        "unavailable": s.unavailable,
    })  # fmt: skip


def standing_of(raw: str) -> Standing:
    """A standing as stored; without "history" (a listed request's, RequestStore's
    LISTED) its history is empty."""
    d = json.loads(raw)
    if not d:
        return Standing()
    return Standing(
        used_micros=d["used_micros"], limit_micros=d["limit_micros"], period=d["period"],
        by_product=tuple((n, m) for n, m in d["by_product"]),
        by_model=tuple((n, m) for n, m in d["by_model"]),
        burn_7d_micros=d["burn_7d_micros"], runs_out_at=_at(d["runs_out_at"]),
        history=tuple(PastRequest(h["request_id"], h["amount_micros"], h["state"],
                                  datetime.fromisoformat(h["created_at"]), h["granted_micros"])
                      for h in d.get("history", ())),
        unavailable=d.get("unavailable", ""),
    )  # fmt: skip


def request_of(r: Mapping[str, Any]) -> Request:
    """A `requests.requests` row as a Request."""
    return Request(
        request_id=r["request_id"], workspace_id=r["workspace_id"], requester=r["requester"],
        amount_micros=r["amount_micros"], duration_seconds=r["duration_seconds"],
        justification=r["justification"], created_at=r["created_at"],
        expires_at=r["expires_at"], steps=steps_of(r["steps"]), state=State(r["state"]),
        version=r["version"], links=tuple(r["links"]), product=r["product"],
        project=r["project"], standing=standing_of(r["standing"]),
        current_step=r["current_step"], granted_micros=r["granted_micros"],
        granted_seconds=r["granted_seconds"], approved_at=r["approved_at"],
        ends_at=r["ends_at"], decided_by=r["decided_by"], decided_at=r["decided_at"],
        decision_reason=r["decision_reason"], override_status=r["override_status"],
    )  # fmt: skip


def entry_of(r: Mapping[str, Any]) -> Entry:
    """A `requests.timeline` row as an Entry."""
    return Entry(r["at"], r["actor"], r["action"], State(r["from_state"]),
                 State(r["to_state"]), r["reason"], r["version"], r["via"])  # fmt: skip
