"""What drove a person's spend: the top product and model of their period so far, from
the Cost API's `UsageService.QueryUsage`, added to a threshold intent that lacks them
(policy, which announces crossings, keeps totals per person only), so the message
says where the money went, not only how much.

Failure: when the Cost API can't answer within `deadline_s` (down, refused, slow), the
intent goes on without them (the message still has the numbers and when they run out)
and a WARNING says why; a crossing is never held back for its context.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import grpc

from quartermaster.tls import ClientTls
from quartermaster.usage_client import UsageClient
from quartermaster.v1 import cost_pb2
from services.notifier.audience import Intent, Kind
from services.notifier.render import period_window

log = logging.getLogger("qm.notifier.drivers")


class SpendDrivers(UsageClient):
    """A client of the Cost API at `target` (host:port; `tls` None: plaintext; `token`:
    role reader) that adds `top_product`, `top_model` and their micro-credits
    (`top_product_micros`, `top_model_micros`) to a person's threshold intent, for the
    period the intent names (`period_key`, in the workspace time zone `tz`)."""

    def __init__(
        self, target: str, *, tls: ClientTls | None, token: str, tz: ZoneInfo,
        deadline_s: float = 2.0,
    ) -> None:  # fmt: skip
        super().__init__(target, tls=tls, token=token, deadline_s=deadline_s)
        self._tz = tz

    async def add_to(self, intent: Intent) -> Intent:
        """`intent` with its drivers when it is a person's threshold crossing without
        them and the Cost API answers; `intent` unchanged otherwise."""
        d = intent.data
        subject = d.get("subject", "")
        if intent.kind is not Kind.THRESHOLD or not subject.startswith("user:"):
            return intent
        if d.get("top_product"):
            return intent
        window = period_window(d.get("period_key", ""), intent.created_at, self._tz)
        if window is None:
            return intent
        # The current hour's rollups count too (they are kept by the quarter hour).
        start, end = window[0], intent.created_at + timedelta(hours=1)
        user = subject.removeprefix("user:")
        try:
            product, model = await asyncio.gather(
                self._top(user, start, end, cost_pb2.DIMENSION_PRODUCT),
                self._top(user, start, end, cost_pb2.DIMENSION_MODEL),
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("threshold message for %s goes without what drove it: the Cost API "
                        "at %s: %s: %s", user, self.target, exc.code().name,
                        exc.details())  # fmt: skip
            return intent
        data = dict(d)
        if product is not None:
            data.update(top_product=product.product, top_product_micros=str(product.micros))
        if model is not None:
            data.update(top_model=model.model, top_model_micros=str(model.micros))
        return replace(intent, data=data)

    async def _top(
        self, user: str, start: datetime, end: datetime, by: cost_pb2.Dimension.ValueType
    ) -> cost_pb2.UsageRow | None:
        top = [r for r in await self.spend_of(user, start, end, by, limit=1) if r.micros > 0]
        return top[0] if top else None
