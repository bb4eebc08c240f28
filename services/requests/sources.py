"""What a request is made from, read at create time over gRPC: the requester's
approvers from policy's DirectoryService (`DirectoryPeople`), and their standing from
policy's GetBudget and metering's Cost API (`SpendStanding`). The servicer sees the two
small protocols `PeopleSource` and `StandingSource`; unit tests hand it fakes.

Failure: routing can't do without the directory, so `PeopleSource.people` raises
`Unreachable` (the request is refused with UNAVAILABLE and nothing is stored); the
standing is context for the approver, so `StandingSource.standing` never raises: what
it could not read is left out and said in `Standing.unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol

import grpc

from quartermaster.directory_client import (
    DirectoryClient,
    DirectoryRequestError,
    DirectoryUnavailable,
)
from quartermaster.grpcclient import ChannelClient
from quartermaster.tls import ClientTls
from quartermaster.usage_client import UsageClient
from quartermaster.v1 import cost_pb2, policy_pb2, policy_pb2_grpc
from services.requests.routing import People, Source
from services.requests.standing import BURN_WINDOW, Standing, runs_out_at

log = logging.getLogger("qm.requests.sources")
_PERIODS = {policy_pb2.PERIOD_DAY: "day", policy_pb2.PERIOD_WEEK: "week",
            policy_pb2.PERIOD_MONTH: "month"}  # fmt: skip


class Unreachable(ConnectionError):
    """A source could not answer; the message names which and why."""


class PeopleSource(Protocol):
    async def people(self, user_id: str) -> People:
        """`user_id`'s approvers by source, levels nearest first. Raises Unreachable."""
        ...


class StandingSource(Protocol):
    async def standing(self, user_id: str, now: datetime) -> Standing:
        """`user_id`'s spend and limit at `now` (history left empty); never raises."""
        ...


def levels_by_group(admins: Sequence[policy_pb2.User]) -> list[tuple[str, ...]]:
    """GroupAdmins' answer (nearest group first) as one level per group."""
    levels: dict[str, list[str]] = {}
    for u in admins:
        levels.setdefault(u.admin_of_group_id or u.user_id, []).append(u.user_id)
    return [tuple(v) for v in levels.values()]


def merge_levels(chains: Sequence[Sequence[tuple[str, ...]]]) -> tuple[tuple[str, ...], ...]:
    """Several chains (one per direct group) as one: level i holds everyone at level i
    of any chain, each person once, at their nearest level."""
    out: list[list[str]] = []
    seen: set[str] = set()
    for i in range(max((len(c) for c in chains), default=0)):
        level = [p for c in chains if i < len(c) for p in c[i] if p not in seen]
        seen.update(level)
        if level:
            out.append(list(dict.fromkeys(level)))
    return tuple(tuple(lv) for lv in out)


class DirectoryPeople:
    """People from policy's DirectoryService: the manager chain (one person a level),
    the admins of the requester's direct groups and their ancestors (a level per group
    distance), and the configured workspace admins (one level)."""

    def __init__(self, client: DirectoryClient, workspace_admins: Sequence[str]) -> None:
        self._client = client
        self._workspace_admins = tuple(workspace_admins)

    async def people(self, user_id: str) -> People:
        chains: dict[Source, tuple[tuple[str, ...], ...]] = {}
        if self._workspace_admins:
            chains[Source.WORKSPACE_ADMINS] = (self._workspace_admins,)
        try:
            user, managers = await asyncio.gather(
                self._client.get_user(user_id), self._client.manager_chain(user_id)
            )
            admins = await asyncio.gather(*(self._client.group_admins(g) for g in user.group_ids))
            groups = [levels_by_group(a) for a in admins]
        except DirectoryRequestError as exc:
            # Someone the directory doesn't know has no manager or groups: routing falls
            # back to the workspace admins and the fallback approver, or refuses.
            log.info("%s not in the directory: %s", user_id, exc)
            return People(chains)
        except DirectoryUnavailable as exc:
            raise Unreachable(str(exc)) from None
        chains[Source.MANAGER] = tuple((m.user_id,) for m in managers)
        chains[Source.GROUP_ADMINS] = merge_levels(groups)
        return People(chains)


class SpendStanding(ChannelClient):
    """Standing from policy's GetBudget (used, limit, period) and metering's Cost API
    (this period by product and by model; the last 7 days), each call within
    `deadline_s`. One channel to each; `token` has role reader on both."""

    def __init__(
        self,
        policy_addr: str,
        usage_addr: str,
        *,
        tls: ClientTls | None,
        token: str,
        deadline_s: float = 2.0,
    ) -> None:
        super().__init__(policy_addr, tls=tls, token=token)
        self._usage = UsageClient(usage_addr, tls=tls, token=token, deadline_s=deadline_s)
        self._policy_stub = policy_pb2_grpc.PolicyServiceStub(self._channel)
        self._deadline = deadline_s

    async def close(self) -> None:
        await super().close()
        await self._usage.close()

    async def standing(self, user_id: str, now: datetime) -> Standing:
        out, missing = Standing(), []
        end = now + timedelta(hours=1)  # the current hour's rollup counts too
        try:
            budget = await self._policy_stub.GetBudget(
                policy_pb2.GetBudgetRequest(user_id=user_id), timeout=self._deadline,
                metadata=self._metadata,
            )  # fmt: skip
            period_end = budget.period_end.ToDatetime().replace(tzinfo=now.tzinfo)
            out = replace(out, used_micros=budget.used_micros, limit_micros=budget.limit_micros,
                          period=_PERIODS.get(budget.period, "month"))  # fmt: skip
            start = budget.period_start.ToDatetime().replace(tzinfo=now.tzinfo)
        except grpc.aio.AioRpcError as exc:
            missing.append(f"budget (policy: {exc.code().name}: {exc.details()})")
            start, period_end = now - timedelta(days=30), now
        try:
            products, models, week = await asyncio.gather(
                self._usage.spend_of(user_id, start, end, cost_pb2.DIMENSION_PRODUCT),
                self._usage.spend_of(user_id, start, end, cost_pb2.DIMENSION_MODEL),
                self._usage.spend_of(user_id, now - BURN_WINDOW, end, None),
            )
            burn = sum(r.micros for r in week)
            out = replace(out, by_product=tuple((r.product, r.micros) for r in products),
                          by_model=tuple((r.model, r.micros) for r in models),
                          burn_7d_micros=burn)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            missing.append(f"spend (Cost API: {exc.code().name}: {exc.details()})")
        if not missing:
            at = runs_out_at(out.used_micros, out.limit_micros, out.burn_7d_micros, now, period_end)
            out = replace(out, runs_out_at=at)
        else:
            log.warning("standing of %s incomplete: %s", user_id, "; ".join(missing))
            out = replace(out, unavailable="could not read " + "; ".join(missing))
        return out


class OverrideSource(Protocol):
    async def granted(self) -> set[str]:
        """Request ids whose override policy has in place now. Raises Unreachable."""
        ...


class PolicyOverrides(ChannelClient):
    """Which requests' overrides policy has, from PolicyAdminService.ListLimits (its
    active overrides, read from PostgreSQL: what every replica loads). `token` has role
    reader."""

    def __init__(
        self, policy_addr: str, *, tls: ClientTls | None, token: str, deadline_s: float = 5.0
    ) -> None:
        super().__init__(policy_addr, tls=tls, token=token)
        self._stub = policy_pb2_grpc.PolicyAdminServiceStub(self._channel)
        self._deadline = deadline_s

    async def granted(self) -> set[str]:
        try:
            listing = await self._stub.ListLimits(
                policy_pb2.ListLimitsRequest(), timeout=self._deadline, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise Unreachable(f"policy's ListLimits at {self.target}: {exc.code().name}: "
                              f"{exc.details()}") from None  # fmt: skip
        return {o.request_id for o in listing.overrides if o.request_id and not o.removed}
