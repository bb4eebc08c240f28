"""The PolicyService servicer: validation, then a decision from memory.

Check, CheckBatch and GetBudget answer from the Evaluator alone (no I/O). Only
Reserve (and Check with `reserve`), Commit and Release touch Postgres, through the
ReservationStore, and a Reserve only when memory does not already deny it (one user's
Reserves take turns on a replica, so the room left is taken in turn and the rest are
denied from memory). Check is the hot path: its common case is told valid in a few
field reads, and its answer is a copy of a prepared message (mapping).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, NoReturn

import grpc

from quartermaster.grpcserver import abort, refuse
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from quartermaster.validation import MAX_ID_LENGTH, NUL, Problems
from services.policy import inputs
from services.policy.directory_import import DirectoryError
from services.policy.errors import Conflict, NotFound, TooMany
from services.policy.evaluator import Evaluator, Verdict
from services.policy.inputs import MAX_MICROS
from services.policy.mapping import budget, check_response, reservation_msg
from services.policy.readiness import Readiness
from services.policy.reservations import Held, settled_here
from services.policy.rules import NoLimit, Resolved
from services.policy.stores.reservations import Periods, ReservationStore

Context = grpc.aio.ServicerContext[Any, Any]
# Open reservations one user may have (QM_POLICY_MAX_OPEN_RESERVATIONS's default).
DEFAULT_MAX_OPEN = 1_000


class UserLocks:
    """An asyncio.Lock per user with a Reserve in progress on this replica, dropped
    when nobody holds or waits for it (memory stays bounded by the calls in flight)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, user_id: str) -> AsyncIterator[None]:
        """Hold `user_id`'s lock for the block (waiting for it first)."""
        lock, users = self._locks.get(user_id) or (asyncio.Lock(), 0)
        self._locks[user_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            # Also when cancelled (the caller's deadline passed) while waiting.
            lock, users = self._locks[user_id]
            if users == 1:
                del self._locks[user_id]
            else:
                self._locks[user_id] = (lock, users - 1)


# The status each domain error ends a call with (for every policy servicer).
STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    NoLimit: grpc.StatusCode.FAILED_PRECONDITION,
    TooMany: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DirectoryError: grpc.StatusCode.INVALID_ARGUMENT,
}


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """PolicyService over one Evaluator and one workspace's ReservationStore;
    `default_ttl`: seconds a reservation lives when the call does not say. Every call
    that answers from memory (Check, CheckBatch, GetBudget, Reserve) ends UNAVAILABLE
    with `readiness.message()` while `readiness` is not ready (default: always ready);
    Commit and Release only settle a reservation in Postgres and always run. A user
    has at most `max_open` open reservations: past them Reserve ends
    RESOURCE_EXHAUSTED (a refusal: PolicyClient raises it, no fail mode answers)."""

    def __init__(
        self,
        evaluator: Evaluator,
        store: ReservationStore,
        default_ttl: float,
        readiness: Readiness | None = None,
        max_open: int = DEFAULT_MAX_OPEN,
    ) -> None:
        self._ev = evaluator
        self._max_open = max_open
        self._store = store
        self._default_ttl = default_ttl
        self._readiness = readiness or Readiness()
        self._user_locks = UserLocks()

    async def _not_ready(self, context: Context) -> NoReturn:
        await abort(context, grpc.StatusCode.UNAVAILABLE, self._readiness.message())

    async def _resolve(self, user_id: str, now: datetime, context: Context) -> Resolved:
        try:
            return self._ev.snapshot.resolve(user_id, now)
        except NoLimit as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    def _answer(self, user_id: str, model: str, estimated: int) -> policy_pb2.CheckResponse:
        """A Check's answer, from memory, now (NoLimit when no limit applies)."""
        ev = self._ev
        now = ev.clock()
        resolved = ev.snapshot.resolve(user_id, now)
        return check_response(ev.verdict(user_id, model, estimated, now, resolved))

    async def Check(
        self, request: policy_pb2.CheckRequest, context: Context
    ) -> policy_pb2.CheckResponse:
        if not self._readiness.ready:
            await self._not_ready(context)
        user, model, estimated = request.user_id, request.model, request.estimated_micros
        product = request.product
        if not (
            # The common case, told in a few field reads and integer comparisons
            # (strip() returns the very string when there is nothing to strip);
            # anything else is looked at field by field. A NUL is looked for too (a
            # memchr each, tens of ns): an id with one is refused on every path, so a
            # Check never answers for an id that no store could hold.
            0 < len(user) <= MAX_ID_LENGTH
            and 0 < len(model) <= MAX_ID_LENGTH
            and 0 < len(product) <= MAX_ID_LENGTH
            and 0 <= estimated <= MAX_MICROS
            and not request.reserve
            and not request.reservation_ttl_seconds
            and user.strip() is user
            and model.strip() is model
            and product.strip() is product
            and NUL not in user
            and NUL not in model
            and NUL not in product
            and len(request.request_id) <= MAX_ID_LENGTH
            and NUL not in request.request_id
        ):
            problems = Problems()
            inputs.check(request, problems)
            await refuse(context, problems)
            if request.reserve:
                return await self._reserve(
                    user, model, estimated, request.request_id, request.reservation_ttl_seconds,
                    context,
                )  # fmt: skip
        try:
            return self._answer(user, model, estimated)
        except NoLimit as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    async def CheckBatch(
        self, request: policy_pb2.CheckBatchRequest, context: Context
    ) -> policy_pb2.CheckBatchResponse:
        if not self._readiness.ready:
            await self._not_ready(context)
        await refuse(context, inputs.check_batch(request))
        answer = self._answer
        try:
            results = [answer(c.user_id, c.model, c.estimated_micros) for c in request.checks]
        except NoLimit as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return policy_pb2.CheckBatchResponse(results=results)

    async def GetBudget(
        self, request: policy_pb2.GetBudgetRequest, context: Context
    ) -> policy_pb2.Budget:
        if not self._readiness.ready:
            await self._not_ready(context)
        await refuse(context, inputs.ids(user_id=request.user_id))
        now = self._ev.clock()
        resolved = await self._resolve(request.user_id, now, context)
        return budget(request.user_id, self._ev.verdict(request.user_id, "", 0, now, resolved))

    # -- reservations --------------------------------------------------------------

    async def Reserve(
        self, request: policy_pb2.ReserveRequest, context: Context
    ) -> policy_pb2.CheckResponse:
        if not self._readiness.ready:
            await self._not_ready(context)
        await refuse(context, inputs.reserve(request))
        return await self._reserve(
            request.user_id, request.model, request.estimated_micros, request.request_id,
            request.ttl_seconds, context,
        )  # fmt: skip

    def _denied(
        self, user_id: str, model: str, estimated: int, request_id: str, now: datetime,
        resolved: Resolved,
    ) -> policy_pb2.CheckResponse | None:  # fmt: skip
        """The answer when memory already says DENY, else None. Postgres knows every
        open reservation this replica knows and maybe more, so it could only deny too
        (unless a release elsewhere is not NOTIFYed here yet: a few ms). Queuing behind
        the user's lock in Postgres for it took ~13 ms a call, and a crowd of callers
        over their limit ran past the gateway's deadline into its fail mode. A
        request_id with a reservation goes on, to be answered with that reservation."""
        if self._ev.reservations.held_for((request_id,)):
            return None
        quick = self._ev.verdict(user_id, model, estimated, now, resolved)
        return None if quick.admitted else check_response(quick)

    def _too_many(self, user_id: str, request_id: str, now: datetime) -> str:
        """Why memory already refuses a new reservation of the user (they have
        `max_open` open ones), or "". Postgres counts again under the lock."""
        mine = self._ev.reservations.of_user(user_id)
        if len(mine) < self._max_open or self._ev.reservations.held_for((request_id,)):
            return ""
        n = sum(1 for h in mine if h.expires_at > now)
        if n < self._max_open:
            return ""
        return (
            f"user_id: {user_id!r} has {n} open reservations, the most one user may have"
            f" ({self._max_open}: QM_POLICY_MAX_OPEN_RESERVATIONS); commit or release them first"
        )

    def _periods(self, user_id: str, now: datetime, resolved: Resolved) -> Periods:
        """What the store sums the open reservations against (stores.reservations)."""
        ev, settled = self._ev, self._ev.totals.settled
        user_key = ev.period(resolved.limit.period, now).key
        here = settled_here(ev.reservations.of_user(user_id), settled, user_key)
        pool_keys = []
        for g, rule in resolved.pools:
            key = ev.period(rule.period, now).key
            pool_keys.append(key)
            here += settled_here(ev.reservations.of_pool(g), settled, key)
        return Periods(user_key, tuple(pool_keys), tuple(here), self._max_open)

    async def _reserve(
        self, user_id: str, model: str, estimated: int, request_id: str, ttl: int,
        context: Context,
    ) -> policy_pb2.CheckResponse:  # fmt: skip
        now = self._ev.clock()
        resolved = await self._resolve(user_id, now, context)
        denied = self._denied(user_id, model, estimated, request_id, now, resolved)
        if denied is not None:
            return denied
        pools = tuple(g for g, _ in resolved.pools)
        too_many = self._too_many(user_id, request_id, now)
        if too_many:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, too_many)

        def admit(held: Held) -> Verdict:
            return self._ev.verdict(user_id, model, estimated, now, resolved, held)

        # One Reserve of a user at a time on this replica: each one's reservation is in
        # memory before the next looks, so once the room is taken the rest are denied
        # from memory instead of each queuing on the user's lock in Postgres (which
        # still keeps the bound across replicas).
        async with self._user_locks.hold(user_id):
            denied = self._denied(user_id, model, estimated, request_id, now, resolved)
            if denied is not None:
                return denied
            try:
                verdict, made, existed = await self._store.reserve(
                    user_id, pools, request_id, estimated, ttl or self._default_ttl, admit,
                    self._periods(user_id, now, resolved),
                )  # fmt: skip
            except TooMany as exc:
                await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            if made is not None and made.user_id == user_id:
                self._ev.reservations.put(made)
        if made is None:
            assert verdict is not None
            return check_response(verdict)
        if existed and made.user_id != user_id:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id: {request_id!r} is reserved for another user",
            )
        # The standing with this reservation counted (used, reserved, remaining, pools)...
        v = self._ev.verdict(user_id, model, 0, now, resolved)
        if existed:
            v.decision = policy_pb2.DECISION_ALLOW if not made.released else v.decision
            v.reason = f"already reserved for this request_id: {v.reason}"
        else:  # ...and the decision that admitted it
            assert verdict is not None
            v.decision, v.reason = verdict.decision, verdict.reason
            v.suggested_model = verdict.suggested_model
        return check_response(v, made.reservation_id)

    async def Commit(
        self, request: policy_pb2.CommitRequest, context: Context
    ) -> policy_pb2.Reservation:
        await refuse(context, inputs.commit(request))
        return await self._settle(request.reservation_id, request.actual_micros, context)

    async def Release(
        self, request: policy_pb2.ReleaseRequest, context: Context
    ) -> policy_pb2.Reservation:
        await refuse(context, inputs.ids(reservation_id=request.reservation_id))
        return await self._settle(request.reservation_id, None, context)

    async def _settle(
        self, reservation_id: str, actual: int | None, context: Context
    ) -> policy_pb2.Reservation:
        try:
            settled = await self._store.settle(reservation_id, actual, self._default_ttl)
        except (NotFound, Conflict) as exc:
            await abort(context, STATUS_OF[type(exc)], str(exc))
        self._ev.reservations.put(settled)
        return reservation_msg(settled)
