"""DirectoryClient against a real grpc.aio server holding a tiny DirectoryService (the
real one needs policy's Postgres; tests/metering/test_costs.py uses it through the Cost API)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from devtools.localinfra import free_port
from quartermaster.directory_client import (
    DirectoryClient,
    DirectoryRequestError,
    DirectoryUnavailable,
)
from quartermaster.grpcserver import abort
from quartermaster.v1 import policy_pb2, policy_pb2_grpc

GROUPS = {"ml": ["ann", "bob"], "ops": ["cat"]}
Context = grpc.aio.ServicerContext[Any, Any]


class Directory(policy_pb2_grpc.DirectoryServiceServicer):
    async def GroupMembers(
        self, request: policy_pb2.GroupMembersRequest, context: Context
    ) -> policy_pb2.GroupMembersResponse:
        unknown = [g for g in request.group_ids if g not in GROUPS]
        if unknown:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"group_ids: {unknown}")
        return policy_pb2.GroupMembersResponse(
            groups=[
                policy_pb2.GroupMemberList(group_id=g, user_ids=GROUPS[g])
                for g in (request.group_ids or sorted(GROUPS))
            ]
        )

    async def GetUser(
        self, request: policy_pb2.GetUserRequest, context: Context
    ) -> policy_pb2.User:
        return policy_pb2.User(user_id=request.user_id, manager_id="bob")

    async def GroupAdmins(
        self, request: policy_pb2.GroupAdminsRequest, context: Context
    ) -> policy_pb2.UserList:
        await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no directory loaded yet")

    async def ManagerChain(
        self, request: policy_pb2.GetUserRequest, context: Context
    ) -> policy_pb2.UserList:
        if request.user_id != "ann":
            await abort(context, grpc.StatusCode.NOT_FOUND, f"user {request.user_id!r}")
        return policy_pb2.UserList(users=[policy_pb2.User(user_id="bob")])

    async def FindUser(
        self, request: policy_pb2.FindUserRequest, context: Context
    ) -> policy_pb2.User:
        if request.slack_user_id != "U-ANN":
            await abort(context, grpc.StatusCode.NOT_FOUND, "no user with slack_user_id")
        return policy_pb2.User(user_id="ann", slack_user_id="U-ANN")


async def test_answers_and_request_errors() -> None:
    server = grpc.aio.server()
    policy_pb2_grpc.add_DirectoryServiceServicer_to_server(Directory(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with DirectoryClient(f"127.0.0.1:{port}") as client:
            assert await client.group_members([]) == {"ml": ("ann", "bob"), "ops": ("cat",)}
            assert await client.group_members(["ops"]) == {"ops": ("cat",)}
            assert [u.user_id for u in await client.manager_chain("ann")] == ["bob"]
            with pytest.raises(DirectoryRequestError, match=r"group_ids: \['nope'\]"):
                await client.group_members(["nope"])
            with pytest.raises(DirectoryRequestError, match="user 'zed'"):
                await client.manager_chain("zed")
            assert (await client.get_user("ann")).manager_id == "bob"
            assert (await client.find_user(slack_user_id="U-ANN")).user_id == "ann"
            with pytest.raises(DirectoryRequestError, match="no user with slack_user_id"):
                await client.find_user(email="zed@x.io")
            with pytest.raises(DirectoryUnavailable, match="FAILED_PRECONDITION: no directory"):
                await client.group_admins("ml")
    finally:
        await server.stop(None)


async def test_an_unreachable_directory_is_named() -> None:
    addr = f"127.0.0.1:{free_port()}"
    async with DirectoryClient(addr, source="QM_DIRECTORY_ADDR", deadline_s=2) as client:
        with pytest.raises(DirectoryUnavailable) as info:
            await client.group_members(["ml"])
    message = str(info.value)
    assert f"DirectoryService at {addr} (QM_DIRECTORY_ADDR): UNAVAILABLE" in message
