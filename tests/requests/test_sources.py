"""The create-time sources without infrastructure: GroupAdmins' answer as levels, several
groups' chains merged, and what each source does when nothing answers (a port with no
server): the directory raises Unreachable (routing can't go on), the standing says what
it could not read and goes on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from devtools.localinfra.ports import free_port
from quartermaster.directory_client import DirectoryClient
from quartermaster.v1 import policy_pb2
from services.requests.sources import (
    DirectoryPeople,
    SpendStanding,
    Unreachable,
    levels_by_group,
    merge_levels,
)
from tests.helpers import TOKENS


def test_group_admins_become_one_level_per_group_nearest_first() -> None:
    admins = [policy_pb2.User(user_id=u, admin_of_group_id=g)
              for u, g in (("lee", "ml"), ("lin", "ml"), ("cto", "eng"))]  # fmt: skip
    assert levels_by_group(admins) == [("lee", "lin"), ("cto",)]
    # two direct groups: level i holds both groups' level i, each person once
    assert merge_levels([[("lee",), ("cto",)], [("sam",), ("cto",), ("ceo",)]]) == (
        ("lee", "sam"),
        ("cto",),
        ("ceo",),
    )
    assert merge_levels([]) == ()


async def test_without_policy_routing_is_unreachable_and_the_standing_says_what_is_missing() -> (
    None
):
    nowhere = f"127.0.0.1:{free_port()}"
    async with DirectoryClient(nowhere, source="QM_REQUESTS_POLICY_ADDR", deadline_s=0.5) as c:
        with pytest.raises(Unreachable, match="QM_REQUESTS_POLICY_ADDR"):
            await DirectoryPeople(c, ("wes",)).people("ann")
    source = SpendStanding(nowhere, nowhere, tls=None, token=TOKENS["reader"], deadline_s=0.5)
    try:
        standing = await source.standing("ann", datetime.now(UTC))
    finally:
        await source.close()
    assert standing.unavailable.startswith("could not read budget (policy: UNAVAILABLE")
    assert "spend (Cost API: UNAVAILABLE" in standing.unavailable
    assert standing.runs_out_at is None
