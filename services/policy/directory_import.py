"""Directory imports: documents (a sync from HR or an identity provider, JSON or
CSV) parsed into a `DirectoryDoc`, and the pure parts of applying one (what changed,
whether the groups form a tree). Pure: stores.directory does the writing.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from quartermaster.validation import MAX_ID_LENGTH, MAX_TEXT_LENGTH, summarize, text_problem
from services.policy.directory import GROUP_KINDS, GroupInfo, UserInfo
from services.policy.errors import Conflict, NotFound

USER_COLUMNS = ("user_id", "email", "display_name", "slack_user_id", "manager_id", "groups")
MAX_IDS = 1000  # ids in one list of a document (a user's groups, a group's admins)


class DirectoryError(ValueError):
    """A document that can't be imported; the message names every problem."""


@dataclass
class DirectoryDoc:
    """A directory document (import or single upserts): what to make true."""

    users: list[UserInfo]
    groups: list[GroupInfo]
    # user_id → direct groups (only for users whose groups the document states)
    memberships: dict[str, list[str]]
    # Groups named only by memberships (a CSV): created when missing.
    implicit_groups: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    """What an import did (or, for a dry run, would do); `changes` says it in lines."""

    users_created: int = 0
    users_updated: int = 0
    users_unchanged: int = 0
    groups_created: int = 0
    groups_updated: int = 0
    groups_unchanged: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    changes: list[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def compare(
        self, kind: str, ident: str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
        fields: Iterable[str], created: str,
    ) -> None:  # fmt: skip
        """Count `kind` `ident` as created, updated or unchanged (`{kind}s_created`...)
        and say what changed in `changes`."""
        if old is None:
            self.changes.append(f"{kind} {ident}: created ({created})")
            self.count(f"{kind}s_created")
            return
        lines = [
            f"{kind} {ident}: {f} {old[f] or '(none)'!s} -> {new[f] or '(none)'!s}"
            for f in fields
            if (old[f] or "") != (new[f] or "")
        ]
        self.changes.extend(lines)
        self.count(f"{kind}s_updated" if lines else f"{kind}s_unchanged")


def check_groups(parents: Mapping[str, str]) -> None:
    """Every parent exists (NotFound) and no group is its own ancestor (Conflict);
    `parents`: group_id → parent_id ("" for none)."""
    for g, p in parents.items():
        if p and p not in parents:
            raise NotFound(f"group {g}: parent {p!r} is not in the directory or the document")
    for g in parents:
        seen = {g}
        p = parents[g]
        while p:
            if p in seen:
                raise Conflict(f"group {g}: its parents form a cycle through {p!r}")
            seen.add(p)
            p = parents.get(p, "")


def membership_changes(
    current: Mapping[str, set[str]], wanted: Mapping[str, list[str]], result: ImportResult
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(user_id, group_id) pairs to add and to remove so that each user of `wanted`
    is in exactly those direct groups; each change is said in `result.changes`."""
    adds, removes = [], []
    for user_id, groups in wanted.items():
        have, want = current.get(user_id, set()), set(groups)
        for gid in sorted(want - have):
            adds.append((user_id, gid))
            result.changes.append(f"user {user_id}: joined {gid}")
        for gid in sorted(have - want):
            removes.append((user_id, gid))
            result.changes.append(f"user {user_id}: left {gid}")
    result.memberships_added, result.memberships_removed = len(adds), len(removes)
    return adds, removes


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
    longest = MAX_ID_LENGTH if key.endswith("_id") else MAX_TEXT_LENGTH
    bad = f"longer than {longest} characters" if len(v) > longest else text_problem(v)
    if bad:
        problems.append(f"{where}.{key}: {bad}")
    return v


def _ids(where: str, v: Any, problems: list[str]) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        problems.append(f"{where}: must be a list of non-empty ids")
        return []
    if len(v) > MAX_IDS:
        problems.append(f"{where}: at most {MAX_IDS} items, got {len(v)}")
        return []
    ids = [x.strip() for x in v]
    for i, x in enumerate(ids):
        bad = f"longer than {MAX_ID_LENGTH} characters" if len(x) > MAX_ID_LENGTH else None
        bad = bad or text_problem(x)
        if bad:
            problems.append(f"{where}[{i}]: {bad}")
    return ids


def user_of(where: str, d: dict[str, Any], problems: list[str]) -> UserInfo:
    """A user from a document's fields; each bad one is added to `problems`."""
    return UserInfo(
        _text(where, d, "user_id", problems, required=True),
        _text(where, d, "email", problems),
        _text(where, d, "display_name", problems),
        _text(where, d, "slack_user_id", problems),
        _text(where, d, "manager_id", problems),
    )


def group_of(where: str, d: dict[str, Any], problems: list[str]) -> GroupInfo:
    """A group from a document's fields; each bad one is added to `problems`."""
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
    """A JSON directory document (see the module docstring); DirectoryError names every problem."""
    try:
        data = json.loads(document)
    except (ValueError, RecursionError) as exc:
        # ValueError: not UTF-8, not JSON, or a number of more digits than Python
        # parses; RecursionError: nested deeper than the parser goes.
        raise DirectoryError(f"document: not JSON ({exc})") from None
    if not isinstance(data, dict) or not set(data) <= {"users", "groups"}:
        raise DirectoryError('document: expected an object with "users" and/or "groups"')
    problems: list[str] = [
        f'document: "{key}" must be a list'
        for key in ("groups", "users")
        if not isinstance(data.get(key) or [], list)
    ]
    if problems:
        raise DirectoryError(summarize(problems))
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
    """A CSV directory document (see the module docstring); DirectoryError names every problem."""
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
            named_groups = [g.strip() for g in (row.get("groups") or "").split(";") if g.strip()]
            gs = _ids(f"line {n}.groups", named_groups, problems)
            memberships[u.user_id] = gs
            named.update(gs)
    doc = DirectoryDoc(users, [], memberships)
    doc.implicit_groups = sorted(named)
    return _checked(doc, problems)


def _checked(doc: DirectoryDoc, problems: list[str]) -> DirectoryDoc:
    _unique("users", [u.user_id for u in doc.users if u.user_id], problems)
    _unique("groups", [g.group_id for g in doc.groups if g.group_id], problems)
    if problems:
        raise DirectoryError(summarize(problems))
    return doc


def parse(fmt: str, document: bytes) -> DirectoryDoc:
    """The document in `fmt` ("json" or "csv"); DirectoryError names every problem."""
    if fmt == "json":
        return parse_json(document)
    if fmt == "csv":
        try:
            return parse_csv(document)
        except csv.Error as exc:  # e.g. a field longer than the csv module's limit
            raise DirectoryError(f"document: not CSV ({exc})") from None
    raise DirectoryError(f'format: expected "json" or "csv", got {fmt!r}')
