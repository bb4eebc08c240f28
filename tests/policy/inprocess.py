"""policy's real servicers on a real grpc.aio server (port 0), over small fakes of
their Postgres stores: for testing validation and mapping in milliseconds, with no
PostgreSQL or Kafka. The stores' SQL is tested against real Postgres elsewhere
(test_policy_admin.py, test_reservations.py); these fakes keep only as much state as
the servicers need to see their calls' effects.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import grpc
import pytest

from quartermaster.periods import PeriodKind
from quartermaster.v1 import policy_pb2_grpc
from services.policy.admin_servicer import PolicyAdminServicer
from services.policy.decide import Enforcement
from services.policy.directory import GroupInfo, UserInfo
from services.policy.directory_import import DirectoryDoc, ImportResult
from services.policy.directory_servicer import DirectoryServicer
from services.policy.errors import Conflict, NotFound, TooMany
from services.policy.evaluator import Evaluator
from services.policy.mapping import prepare_response
from services.policy.model_rules import ModelPolicy
from services.policy.policy_servicer import PolicyServicer
from services.policy.readiness import Readiness
from services.policy.reservations import (
    Admission,
    Held,
    Reservation,
    ReservationsView,
    is_repeat,
    settle_refusal,
)
from services.policy.rules import Override, Rule, Snapshot
from services.policy.stores.directory import DirectoryStore
from services.policy.stores.limits import LimitStore
from services.policy.stores.reservations import Periods, ReservationStore
from services.policy.totals import TotalsIndex
from services.policy.wiring import add_servicers
from tests.helpers import in_process_server, metadata

V = TypeVar("V", bound=Admission)
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)
ADMIN = metadata("admin")  # the actor "tests-admin"


def snapshot() -> Snapshot:
    """ann and ben in ml (inside eng, a pooled budget); a 10-credit monthly default."""
    return Snapshot(
        workspace_id="ws",
        default=Rule(10_000_000, PeriodKind.MONTH, Enforcement.HARD),
        users={
            u: UserInfo(u, f"{u}@x.io", manager_id="lead" if u != "lead" else "")
            for u in ("ann", "ben", "lead")
        },
        groups={
            "eng": GroupInfo("eng", "Eng", "department", admins=("cto",)),
            "ml": GroupInfo("ml", "ML", "team", "eng", admins=("lead",)),
        },
        memberships={"ann": ("ml",), "ben": ("ml",)},
        pool_limits={"eng": Rule(100_000_000, PeriodKind.MONTH, Enforcement.HARD)},
        model_policies={"ml": ModelPolicy("ml", frozenset({"gpt-5", "gpt-5-mini"}))},
    )


class FakeReservations(ReservationStore):
    """Reservations in a dict, admitted by the real verdict like the real store."""

    def __init__(self) -> None:
        self.workspace_id = "ws"
        self.by_id: dict[str, Reservation] = {}

    async def reserve(
        self, user_id: str, pools: tuple[str, ...], request_id: str, estimated: int,
        ttl_seconds: float, admit: Callable[[Held], V], periods: Periods,
    ) -> tuple[V | None, Reservation | None, bool]:  # fmt: skip
        same = next((r for r in self.by_id.values() if r.request_id == request_id), None)
        if same is not None:
            return None, same, True
        held = [r for r in self.by_id.values() if not r.released and r.expires_at > NOW]
        mine = [r for r in held if r.user_id == user_id]
        if len(mine) >= periods.max_open:
            raise TooMany(f"user_id: {user_id!r} has {len(mine)} open reservations")
        by_pool = {g: sum(r.micros for r in held if g in r.pools) for g in pools}
        verdict = admit(Held(sum(r.micros for r in mine), by_pool, len(mine)))
        if not verdict.admitted:
            return verdict, None, False
        made = Reservation(str(uuid.uuid4()), user_id, request_id, pools, estimated,
                           NOW + timedelta(seconds=ttl_seconds), estimated)  # fmt: skip
        self.by_id[made.reservation_id] = made
        return verdict, made, False

    async def settle(
        self, reservation_id: str, actual: int | None, keep_seconds: float
    ) -> Reservation:
        found = self.by_id.get(reservation_id)
        if found is None:
            raise NotFound(f"reservation_id: no reservation {reservation_id!r}")
        refusal = settle_refusal(found, found.expires_at <= NOW, actual)
        if refusal is not None:
            raise Conflict(refusal)
        if is_repeat(found, actual):
            return found
        done = (
            replace(found, released=True)
            if actual is None
            else replace(found, micros=actual, committed=True)
        )
        self.by_id[reservation_id] = done
        return done


def _row(**fields: Any) -> dict[str, Any]:
    return {"updated_by": "tests-admin", "updated_at": NOW, **fields}


class FakeLimits(LimitStore):
    """Remembers the last change; answers with the rows the real store returns."""

    def __init__(self) -> None:
        self.workspace_id = "ws"
        self.calls: list[tuple[str, Any]] = []

    async def set_workspace_default(
        self, limit_micros: int, enforcement: Enforcement, actor: str,
        period: PeriodKind = PeriodKind.MONTH,
    ) -> dict[str, Any]:  # fmt: skip
        self.calls.append(("default", (limit_micros, enforcement, actor, period)))
        return _row(default_limit_micros=limit_micros, period=period.value,
                    enforcement=enforcement.value)  # fmt: skip

    async def set_group_limit(
        self, group_id: str, scope: str, rule: Rule, actor: str
    ) -> dict[str, Any]:
        if group_id not in snapshot().groups:
            raise NotFound(f"group_id: no group {group_id!r} in the directory")
        self.calls.append(("group", (group_id, scope, rule, actor)))
        return _row(limit_micros=rule.micros, period=rule.period.value,
                    enforcement=rule.enforcement.value)  # fmt: skip

    async def set_override(self, o: Override, actor: str) -> tuple[Override, bool]:
        self.calls.append(("override", (o, actor)))
        return replace(o, override_id=o.override_id or "ov-1"), True

    async def listing(
        self,
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[Override]]:
        default = _row(default_limit_micros=10_000_000, period="month", enforcement="hard")
        pool = _row(group_id="eng", scope="pool", limit_micros=100_000_000, period="month",
                    enforcement="hard")  # fmt: skip
        return default, [pool], []


class FakeDirectory(DirectoryStore):
    """Counts what an import states; knows the snapshot's users."""

    def __init__(self) -> None:
        self.workspace_id = "ws"
        self.applied: list[DirectoryDoc] = []

    async def user_exists(self, user_id: str) -> bool:
        return user_id in snapshot().users

    async def apply(self, doc: DirectoryDoc, actor: str, dry_run: bool) -> ImportResult:
        self.applied.append(doc)
        result = ImportResult(users_created=len(doc.users), groups_created=len(doc.groups))
        for user_id, groups in doc.memberships.items():
            result.changes += [f"user {user_id}: joined {g}" for g in groups]
        return result


@dataclass
class InProcess:
    """The stubs of a running in-process policy server, and what sits behind them."""

    policy: policy_pb2_grpc.PolicyServiceAsyncStub
    admin: policy_pb2_grpc.PolicyAdminServiceAsyncStub
    directory: policy_pb2_grpc.DirectoryServiceAsyncStub
    evaluator: Evaluator
    reservations: FakeReservations
    limits: FakeLimits
    dir_store: FakeDirectory
    reloads: list[int] = field(default_factory=list)
    # What the PolicyService consults before answering from memory (ready here).
    readiness: Readiness = field(default_factory=Readiness)


@asynccontextmanager
async def policy_in_process(max_open: int = 1_000) -> AsyncIterator[InProcess]:
    """A grpc.aio server on 127.0.0.1 port 0 with the three policy servicers (a user
    may have `max_open` open reservations)."""
    snap, totals = snapshot(), TotalsIndex()
    totals.set_pools(snap.pool_members())
    ev = Evaluator(snap, totals, ReservationsView(), ZoneInfo("UTC"), 80,
                   clock=lambda: NOW, prepare=prepare_response)  # fmt: skip
    reservations, limits, dir_store = FakeReservations(), FakeLimits(), FakeDirectory()
    reloads: list[int] = []
    readiness = Readiness()

    async def reload() -> None:
        reloads.append(1)

    admin = PolicyAdminServicer(limits, dir_store, ev, reload, clock=lambda: NOW)

    def add(server: grpc.aio.Server) -> None:
        policy = PolicyServicer(ev, reservations, 600, readiness, max_open)
        add_servicers(server, policy, admin, DirectoryServicer(ev))

    async with in_process_server(add) as ch:
        yield InProcess(
            policy_pb2_grpc.PolicyServiceStub(ch), policy_pb2_grpc.PolicyAdminServiceStub(ch),
            policy_pb2_grpc.DirectoryServiceStub(ch), ev, reservations, limits, dir_store,
            reloads, readiness,
        )  # fmt: skip


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call ends with (it must end with one)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value
