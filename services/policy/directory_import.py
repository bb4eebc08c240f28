"""Directory documents (a sync from HR or an identity provider), JSON or CSV.

JSON:
    {"groups": [{"group_id": "eng", "name": "Engineering", "kind": "department",
                 "parent_id": "", "cost_center": "CC-100", "admins": ["carol"]}],
     "users":  [{"user_id": "alice", "email": "alice@example.com",
                 "display_name": "Alice", "slack_user_id": "U01", "manager_id": "carol",
                 "groups": ["ml-team"]}]}

CSV (one row per user; a header row names the columns, `user_id` required):
    user_id,email,display_name,slack_user_id,manager_id,groups
    alice,alice@example.com,Alice,U01,carol,ml-team;platform

A user's `groups`, when given, become exactly their direct groups; users and groups
the document does not mention are left alone. Groups a CSV names that the
directory doesn't have yet are created (kind "group", named by their id).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from services.policy.rules import GroupInfo, UserInfo
from services.policy.store import GROUP_KINDS, DirectoryDoc

MAX_ID = 256
USER_COLUMNS = ("user_id", "email", "display_name", "slack_user_id", "manager_id", "groups")


class DirectoryError(ValueError):
    """A document that can't be imported; the message names every problem."""


def _text(
    where: str, d: dict[str, Any], key: str, problems: list[str], required: bool = False
) -> str:
    v: object = d.get(key, "")
    if v is None:
        v = ""
    if not isinstance(v, str):
        problems.append(f"{where}.{key}: must be a string")
        return ""
    v = v.strip()
    if required and not v:
        problems.append(f"{where}.{key}: must not be empty")
    if len(v) > MAX_ID and key.endswith("_id"):
        problems.append(f"{where}.{key}: longer than {MAX_ID} characters")
    return v


def _ids(where: str, v: Any, problems: list[str]) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        problems.append(f"{where}: must be a list of non-empty ids")
        return []
    return [x.strip() for x in v]


def user_of(where: str, d: dict[str, Any], problems: list[str]) -> UserInfo:
    return UserInfo(
        _text(where, d, "user_id", problems, required=True),
        _text(where, d, "email", problems),
        _text(where, d, "display_name", problems),
        _text(where, d, "slack_user_id", problems),
        _text(where, d, "manager_id", problems),
    )


def group_of(where: str, d: dict[str, Any], problems: list[str]) -> GroupInfo:
    g = GroupInfo(
        _text(where, d, "group_id", problems, required=True),
        _text(where, d, "name", problems),
        _text(where, d, "kind", problems) or "group",
        _text(where, d, "parent_id", problems),
        _text(where, d, "cost_center", problems),
        tuple(_ids(f"{where}.admins", d.get("admins"), problems)),
    )
    if g.kind not in GROUP_KINDS:
        problems.append(f"{where}.kind: {g.kind!r} is not one of {', '.join(GROUP_KINDS)}")
    if g.parent_id and g.parent_id == g.group_id:
        problems.append(f"{where}.parent_id: a group can't be its own parent")
    if not g.name:
        g = GroupInfo(g.group_id, g.group_id, g.kind, g.parent_id, g.cost_center, g.admins)
    return g


def _unique(kind: str, ids: list[str], problems: list[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            problems.append(f"{kind}: {i!r} appears more than once")
        seen.add(i)


def parse_json(document: bytes) -> DirectoryDoc:
    try:
        data = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DirectoryError(f"document: not JSON ({exc})") from None
    if not isinstance(data, dict) or not set(data) <= {"users", "groups"}:
        raise DirectoryError('document: expected an object with "users" and/or "groups"')
    problems: list[str] = []
    users, groups, memberships = [], [], {}
    for i, d in enumerate(data.get("groups") or []):
        if not isinstance(d, dict):
            problems.append(f"groups[{i}]: must be an object")
            continue
        groups.append(group_of(f"groups[{i}]", d, problems))
    for i, d in enumerate(data.get("users") or []):
        if not isinstance(d, dict):
            problems.append(f"users[{i}]: must be an object")
            continue
        u = user_of(f"users[{i}]", d, problems)
        users.append(u)
        if "groups" in d:
            memberships[u.user_id] = _ids(f"users[{i}].groups", d["groups"], problems)
    return _checked(DirectoryDoc(users, groups, memberships), problems)


def parse_csv(document: bytes) -> DirectoryDoc:
    try:
        text = document.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DirectoryError(f"document: not UTF-8 ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    problems: list[str] = []
    unknown = [c for c in header if c not in USER_COLUMNS]
    if "user_id" not in header:
        raise DirectoryError("document: the header row must name a user_id column")
    if unknown:
        problems.append(
            f"header: unknown column(s) {', '.join(unknown)}; expected {', '.join(USER_COLUMNS)}"
        )
    users, memberships = [], {}
    named: set[str] = set()
    for n, row in enumerate(reader, start=2):
        if None in row:
            problems.append(f"line {n}: more fields than the header has columns")
            continue
        u = user_of(f"line {n}", {k: v for k, v in row.items() if k != "groups"}, problems)
        users.append(u)
        if "groups" in header:
            gs = [g.strip() for g in (row.get("groups") or "").split(";") if g.strip()]
            memberships[u.user_id] = gs
            named.update(gs)
    doc = DirectoryDoc(users, [], memberships)
    doc.implicit_groups = sorted(named)
    return _checked(doc, problems)


def _checked(doc: DirectoryDoc, problems: list[str]) -> DirectoryDoc:
    _unique("users", [u.user_id for u in doc.users if u.user_id], problems)
    _unique("groups", [g.group_id for g in doc.groups if g.group_id], problems)
    if problems:
        raise DirectoryError(
            "; ".join(problems[:50])
            + (f" (and {len(problems) - 50} more)" if len(problems) > 50 else "")
        )
    return doc


def parse(fmt: str, document: bytes) -> DirectoryDoc:
    if fmt == "json":
        return parse_json(document)
    if fmt == "csv":
        return parse_csv(document)
    raise DirectoryError(f'format: expected "json" or "csv", got {fmt!r}')
