"""DirectoryService: read-only look-ups of people and groups for the other services,
answered from this replica's snapshot (no I/O)."""

from __future__ import annotations

import grpc

from quartermaster.grpcserver import abort, refuse
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from quartermaster.validation import MAX_SHOWN
from services.policy import inputs
from services.policy.directory import UserInfo
from services.policy.evaluator import Evaluator
from services.policy.mapping import user_msg
from services.policy.policy_servicer import Context


class DirectoryServicer(policy_pb2_grpc.DirectoryServiceServicer):
    """DirectoryService over the evaluator's current snapshot."""

    def __init__(self, evaluator: Evaluator) -> None:
        self._ev = evaluator

    async def _user(self, user_id: str, context: Context) -> UserInfo:
        await refuse(context, inputs.ids(user_id=user_id))
        u = self._ev.snapshot.users.get(user_id)
        if u is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"user_id: no user {user_id!r}")
        return u

    async def GetUser(
        self, request: policy_pb2.GetUserRequest, context: Context
    ) -> policy_pb2.User:
        return user_msg(self._ev.snapshot, await self._user(request.user_id, context))

    async def ManagerChain(
        self, request: policy_pb2.GetUserRequest, context: Context
    ) -> policy_pb2.UserList:
        await self._user(request.user_id, context)
        snap = self._ev.snapshot
        chain = snap.directory().manager_chain(request.user_id)
        return policy_pb2.UserList(users=[user_msg(snap, u) for u in chain])

    async def GroupAdmins(
        self, request: policy_pb2.GroupAdminsRequest, context: Context
    ) -> policy_pb2.UserList:
        await refuse(context, inputs.ids(group_id=request.group_id))
        snap = self._ev.snapshot
        if request.group_id not in snap.groups:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"group_id: no group {request.group_id!r}"
            )
        users = []
        for group_id, admin in snap.directory().admins_by_group(request.group_id):
            msg = user_msg(snap, admin)
            msg.admin_of_group_id = group_id
            users.append(msg)
        return policy_pb2.UserList(users=users)

    async def FindUser(
        self, request: policy_pb2.FindUserRequest, context: Context
    ) -> policy_pb2.User:
        """By Slack id first, else by e-mail (without case). A scan of the snapshot's
        users: this answers a person's click, not a hot path, and keeps the snapshot
        free of another index to build on every directory change."""
        await refuse(context, inputs.find_user(request))
        slack, email = request.slack_user_id.strip(), request.email.strip().lower()
        if not slack and not email:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "slack_user_id, email: give at least one")  # fmt: skip
        snap = self._ev.snapshot
        users = list(snap.users.values())
        found = next((u for u in users if slack and u.slack_user_id == slack), None)
        if found is None and email:
            found = next((u for u in users if u.email.lower() == email), None)
        if found is None:
            await abort(context, grpc.StatusCode.NOT_FOUND,
                        "no user with slack_user_id"
                        f" {request.slack_user_id!r} or email {request.email!r}")  # fmt: skip
        return user_msg(snap, found)

    async def GroupMembers(
        self, request: policy_pb2.GroupMembersRequest, context: Context
    ) -> policy_pb2.GroupMembersResponse:
        problems = inputs.ids()
        inputs.id_list("group_ids", list(request.group_ids), problems)
        await refuse(context, problems)
        members = self._ev.snapshot.directory().group_members()
        unknown = [g for g in request.group_ids if g not in members]
        if unknown:
            more = f" and {len(unknown) - MAX_SHOWN} more" if len(unknown) > MAX_SHOWN else ""
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"group_ids: no group(s) {unknown[:MAX_SHOWN]}{more}",
            )
        asked = list(dict.fromkeys(request.group_ids)) or sorted(members)
        return policy_pb2.GroupMembersResponse(
            groups=[policy_pb2.GroupMemberList(group_id=g, user_ids=members[g]) for g in asked]
        )
