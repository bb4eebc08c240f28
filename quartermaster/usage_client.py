"""A client of metering's Cost API (`UsageService`) for what one person spent, used by
the services that show it: requests (an approver's view of the requester's standing)
and the notifier (what drove a threshold crossing). Errors are grpc.aio.AioRpcError,
left to the caller: each decides what a missing answer means."""

from __future__ import annotations

from datetime import datetime

from quartermaster.grpcclient import ChannelClient
from quartermaster.periods import quarter_ceil
from quartermaster.tls import ClientTls
from quartermaster.v1 import cost_pb2, cost_pb2_grpc
from quartermaster.wire import timestamp


class UsageClient(ChannelClient):
    """`UsageService` at `target` (host:port; `tls` None: plaintext; `token`: role
    reader), each call within `deadline_s` seconds."""

    def __init__(
        self, target: str, *, tls: ClientTls | None, token: str, deadline_s: float = 2.0
    ) -> None:
        super().__init__(target, tls=tls, token=token)
        self._stub = cost_pb2_grpc.UsageServiceStub(self._channel)
        self.deadline_s = deadline_s

    async def spend_of(
        self, user_id: str, start: datetime, end: datetime,
        by: cost_pb2.Dimension.ValueType | None = None, limit: int = 100,
    ) -> list[cost_pb2.UsageRow]:  # fmt: skip
        """`user_id`'s spend in [start, end) (aware instants) as one total, or one row
        per value of `by` (largest spend first), at most `limit` rows. The Cost API
        takes quarter hours only (its rollups' buckets): each of start and end is moved
        up to the next one, as the API itself did before it refused others."""
        request = cost_pb2.QueryUsageRequest(
            filter=cost_pb2.UsageFilter(start=timestamp(quarter_ceil(start)),
                                        end=timestamp(quarter_ceil(end)), user_ids=[user_id]),
            group_by=[by] if by is not None else [], granularity=cost_pb2.GRANULARITY_TOTAL,
            limit=limit,
        )  # fmt: skip
        answer = await self._stub.QueryUsage(
            request, timeout=self.deadline_s, metadata=self._metadata
        )
        return list(answer.rows)
