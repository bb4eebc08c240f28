"""The directory: the in-memory picture of a workspace's people, groups and memberships.

Pure (no I/O). It changes with a directory sync, not with limits: a reload after a
change of limits keeps it (and its caches) while the workspace's directory_version
stays. Everything here follows from the people and groups alone: group chains, who is
in which group through nesting, who draws on which pooled budget, manager chains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# The kinds a group may be; "group" when a document does not say.
GROUP_KINDS = ("department", "team", "project", "cost_center", "group")


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A person in the directory; "" where unknown."""

    user_id: str
    email: str = ""
    display_name: str = ""
    slack_user_id: str = ""
    manager_id: str = ""


# UserInfo's fields, as a directory document and the users table name them.
USER_FIELDS = ("email", "display_name", "slack_user_id", "manager_id")
USER_FIELDS_ALL = ("user_id", *USER_FIELDS)
GROUP_FIELDS = ("name", "kind", "parent_id", "cost_center")


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group: `kind` one of GROUP_KINDS, `parent_id` "" at the top, `admins` user ids."""

    group_id: str
    name: str = ""
    kind: str = "group"
    parent_id: str = ""
    cost_center: str = ""
    admins: tuple[str, ...] = ()


@dataclass
class Directory:
    """People, groups and memberships (user_id → direct group ids), with caches of
    what follows from them. Built whole by the snapshot loader and never changed
    afterwards, except for the caches, which fill on first use."""

    users: Mapping[str, UserInfo] = field(default_factory=dict)
    groups: Mapping[str, GroupInfo] = field(default_factory=dict)
    memberships: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    members: dict[str, tuple[str, ...]] | None = field(default=None, repr=False)
    # one person per distinct set of direct groups
    firsts: tuple[str, ...] | None = field(default=None, repr=False)
    # the pooled groups it was made for, and user_id → their pools
    pools_of: tuple[frozenset[str], dict[str, tuple[str, ...]]] | None = field(
        default=None, repr=False
    )

    def chain(self, group_id: str) -> tuple[str, ...]:
        """The group and its ancestors, nearest first (a cycle is cut where it closes)."""
        found = self.chains.get(group_id)
        if found is None:
            out: list[str] = []
            g: str = group_id
            while g and g not in out:
                out.append(g)
                info = self.groups.get(g)
                g = info.parent_id if info is not None else ""
            found = self.chains[group_id] = tuple(out)
        return found

    def above(self, direct: tuple[str, ...]) -> tuple[str, ...]:
        """The groups `direct` and their ancestors, without repeats."""
        seen: dict[str, None] = {}
        for d in direct:
            for g in self.chain(d):
                seen.setdefault(g)
        return tuple(seen)

    def groups_of(self, user_id: str) -> tuple[str, ...]:
        """Every group the user belongs to, directly or through nesting, without repeats."""
        return self.above(self.memberships.get(user_id, ()))

    def pool_members(self, pooled: frozenset[str]) -> dict[str, tuple[str, ...]]:
        """user_id → the groups of `pooled` whose budget they draw on (users in any
        pool); the same dict while the set of pooled groups is the same."""
        if self.pools_of is not None and self.pools_of[0] == pooled:
            return self.pools_of[1]
        out: dict[str, tuple[str, ...]] = {}
        if pooled:
            # Per distinct set of direct groups: far fewer than people.
            by_direct: dict[tuple[str, ...], tuple[str, ...]] = {}
            for user_id, direct in self.memberships.items():
                pools = by_direct.get(direct)
                if pools is None:
                    pools = by_direct[direct] = tuple(g for g in self.above(direct) if g in pooled)
                if pools:
                    out[user_id] = pools
        self.pools_of = (pooled, out)
        return out

    def group_members(self) -> dict[str, tuple[str, ...]]:
        """group_id → everyone in it, through nested groups too (sorted; made once)."""
        if self.members is None:
            members: dict[str, set[str]] = {g: set() for g in self.groups}
            for user_id in self.memberships:
                for g in self.groups_of(user_id):
                    members.setdefault(g, set()).add(user_id)
            self.members = {g: tuple(sorted(u)) for g, u in members.items()}
        return self.members

    def first_of_each_group_set(self) -> tuple[str, ...]:
        """One person per distinct set of direct groups (made once)."""
        if self.firsts is None:
            firsts: dict[tuple[str, ...], str] = {}
            for user_id, direct in self.memberships.items():
                firsts.setdefault(direct, user_id)
            self.firsts = tuple(firsts.values())
        return self.firsts

    def manager_chain(self, user_id: str) -> list[UserInfo]:
        """The user's manager, their manager, and so on (a cycle is cut)."""
        out: list[UserInfo] = []
        seen = {user_id}
        info = self.users.get(user_id)
        while info is not None and info.manager_id and info.manager_id not in seen:
            seen.add(info.manager_id)
            info = self.users.get(info.manager_id)
            if info is not None:
                out.append(info)
        return out

    def group_admins(self, group_id: str) -> list[UserInfo]:
        """The admins of the group and of every group above it, nearest first, each
        once (an admin not in the directory is named by id alone)."""
        return [u for _, u in self.admins_by_group(group_id)]

    def admins_by_group(self, group_id: str) -> list[tuple[str, UserInfo]]:
        """(group id, admin) for the group and every group above it, nearest first, each
        admin once, at the nearest group naming them (levels for approval routing)."""
        seen: dict[str, str] = {}
        for g in self.chain(group_id):
            info = self.groups.get(g)
            for a in info.admins if info is not None else ():
                seen.setdefault(a, g)
        return [(g, self.users.get(a) or UserInfo(a)) for a, g in seen.items()]
