"""`DirectoryClient`: how a service asks policy's DirectoryService who is who.

    async with DirectoryClient("policy:50051", token=reader_token) as directory:
        members = await directory.group_members(["ml"])  # {"ml": ("ann", "bob")}
        chain = await directory.manager_chain("ann")  # [User(bob), User(cat)]

Every call has a deadline (`deadline_s`, default 10 s: these answers are small, and the
callers are reports and approvals, not the per-request path). Errors are mapped to two
kinds a caller can tell apart:

- `DirectoryRequestError` (a `LookupError`): the request names a user or group the
  directory does not know, or is invalid (NOT_FOUND, INVALID_ARGUMENT); the message is
  the server's, naming what is wrong. Asking again will not help.
- `DirectoryUnavailable` (a `ConnectionError`): any other failure (unreachable, slow,
  no directory loaded yet); the message names the address and, when given, the setting
  it came from (`source`), so an operator knows what to fix. A refused credential
  (UNAUTHENTICATED, PERMISSION_DENIED) is one of these too: the server's message says
  what the call needed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from quartermaster.grpcclient import ChannelClient
from quartermaster.tls import ClientTls
from quartermaster.v1 import policy_pb2, policy_pb2_grpc

_BAD_REQUEST = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
T = TypeVar("T")


class DirectoryRequestError(LookupError):
    """The directory refused the request: an unknown user or group, or a bad field."""


class DirectoryUnavailable(ConnectionError):
    """The directory could not answer; the message names its address."""


class DirectoryClient(ChannelClient):
    """DirectoryService calls over one channel (see the module docstring for errors)."""

    def __init__(
        self,
        target: str,
        *,
        source: str = "",
        deadline_s: float = 10.0,
        tls: ClientTls | None = None,
        token: str = "",
    ) -> None:
        """`target`: host:port of a policy server; `source`: where the address came from
        (a setting's name), quoted in errors; `tls`: None for plaintext; `token`: a
        bearer token with role reader."""
        if deadline_s <= 0:
            raise ValueError("deadline_s must be > 0")
        super().__init__(target, tls=tls, token=token)
        self.source = source
        self.deadline_s = deadline_s
        self._stub = policy_pb2_grpc.DirectoryServiceStub(self._channel)

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await rpc(request, timeout=self.deadline_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _BAD_REQUEST:
                raise DirectoryRequestError(exc.details()) from None
            where = f"{self.target} ({self.source})" if self.source else self.target
            raise DirectoryUnavailable(
                f"policy's DirectoryService at {where}: {exc.code().name}: {exc.details()}"
            ) from None

    async def group_members(self, group_ids: list[str]) -> dict[str, tuple[str, ...]]:
        """group id → its user ids now (nested groups' members included, sorted), in the
        order asked; every group when `group_ids` is empty. DirectoryRequestError names
        unknown groups."""
        request = policy_pb2.GroupMembersRequest(group_ids=group_ids)
        resp = await self._call(self._stub.GroupMembers, request)
        return {g.group_id: tuple(g.user_ids) for g in resp.groups}

    async def get_user(self, user_id: str) -> policy_pb2.User:
        """The user, with the groups they are a direct member of."""
        return await self._call(self._stub.GetUser, policy_pb2.GetUserRequest(user_id=user_id))

    async def find_user(self, slack_user_id: str = "", email: str = "") -> policy_pb2.User:
        """The person with this Slack id, else with this e-mail (without case);
        DirectoryRequestError when neither matches or both are empty."""
        request = policy_pb2.FindUserRequest(slack_user_id=slack_user_id, email=email)
        return await self._call(self._stub.FindUser, request)

    async def manager_chain(self, user_id: str) -> list[policy_pb2.User]:
        """The user's manager, their manager, ... (nearest first, cycles cut)."""
        request = policy_pb2.GetUserRequest(user_id=user_id)
        return list((await self._call(self._stub.ManagerChain, request)).users)

    async def group_admins(self, group_id: str) -> list[policy_pb2.User]:
        """Admins of the group and of every ancestor group, nearest group first."""
        request = policy_pb2.GroupAdminsRequest(group_id=group_id)
        return list((await self._call(self._stub.GroupAdmins, request)).users)
