"""Who may call what: the one table from gRPC method to the roles that may call it.

Every server's authenticating interceptor (quartermaster.auth) reads this table, and
docs/security.md shows it as `markdown()` renders it (a test compares the two, and
another fails when a proto grows an RPC that is not here). A method missing from the
table is refused to every credential: deny by default.

The roles (a credential holds one or more, quartermaster.tokens):
- gateway: asks policy before and after each model call (Check, Reserve, Commit, ...)
  and reads budgets.
- reader: dashboards, reports and services that read: costs, the directory, budgets,
  limits, prices. Everyone's spend and the people directory are behind it.
- admin: changes limits and the directory; may read what a reader reads.
- prices: loads the price catalog (money rules of their own, often another team);
  may read prices.
- member: a person acting for themself (the credential's name is their directory user
  id): asks for credits, decides what awaits them, sees their own requests.
- delegate: a trusted service (the notifier, a console backend) acting for a person it
  authenticated, named in metadata `qm-on-behalf-of` (quartermaster.auth.person); the
  timeline records "<person> via <service>". It never holds an admin's powers.
- reporter: posts usage to metering's HTTP ingest (POST /v1/usage; no gRPC method);
  the credential's name is the reporter, sent with its records as `qm-source`.
An admin is a person too (name = user id) and may also list every request, revoke and
decide as a workspace admin, but never on their own request.

Pure (no gRPC): a table and its rendering.
"""

from __future__ import annotations

from collections.abc import Mapping

GATEWAY, READER, ADMIN, PRICES = "gateway", "reader", "admin", "prices"
MEMBER, DELEGATE, REPORTER = "member", "delegate", "reporter"
_V1 = "/quartermaster.v1."


def _service(name: str, methods: Mapping[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    return {f"{_V1}{name}/{method}": frozenset(roles) for method, roles in methods.items()}


_READ = (READER, ADMIN)
_PEOPLE = (MEMBER, DELEGATE, ADMIN)
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    **_service(
        "PolicyService",
        {
            "Check": (GATEWAY,),
            "CheckBatch": (GATEWAY,),
            "Reserve": (GATEWAY,),
            "Commit": (GATEWAY,),
            "Release": (GATEWAY,),
            "GetBudget": (GATEWAY, READER, ADMIN),
        },
    ),
    **_service(
        "PolicyAdminService",
        {
            "SetDefaultLimit": (ADMIN,),
            "SetGroupLimit": (ADMIN,),
            "RemoveGroupLimit": (ADMIN,),
            "SetOverride": (ADMIN,),
            "RemoveOverride": (ADMIN,),
            "SetModelPolicy": (ADMIN,),
            "UpsertUser": (ADMIN,),
            "UpsertGroup": (ADMIN,),
            "SetMemberships": (ADMIN,),
            "ImportDirectory": (ADMIN,),
            "ListLimits": _READ,
            "ExplainLimit": _READ,
        },
    ),
    **_service(
        "DirectoryService",
        {
            "GetUser": _READ,
            "ManagerChain": _READ,
            "GroupAdmins": _READ,
            "GroupMembers": _READ,
            # The notifier (a reader) maps a Slack click to the person who made it.
            "FindUser": _READ,
        },
    ),
    **_service("UsageService", {"QueryUsage": _READ, "TopSpenders": _READ}),
    **_service(
        "PriceCatalogService",
        {
            "LoadPrices": (PRICES,),
            "ListPrices": (READER, ADMIN, PRICES),
            "PriceHistory": (READER, ADMIN, PRICES),
        },
    ),
    # People act through member and admin credentials, or through a delegate acting for
    # them; who may see or change which request is the servicer's (services.requests).
    **_service(
        "RequestService",
        {
            "Create": _PEOPLE,
            "Get": (*_PEOPLE, READER),
            "Cancel": _PEOPLE,
            "Decide": _PEOPLE,
            "Revoke": _PEOPLE,
            "ListMine": _PEOPLE,
            "ListAwaitingMe": _PEOPLE,
            "ListAll": (ADMIN, READER),
        },
    ),
}
"""gRPC method path (`/package.Service/Method`, as a server sees it) → roles that may
call it (any one of them suffices)."""


def short(method: str) -> str:
    """`/quartermaster.v1.PolicyService/Check` → `PolicyService/Check`."""
    return method.removeprefix(_V1).lstrip("/")


def needed(method: str) -> frozenset[str]:
    """The roles that may call `method` (a gRPC path); empty for a method no one may."""
    return METHOD_ROLES.get(method, frozenset())


def markdown() -> str:
    """The table as docs/security.md shows it: one row per method, in table order."""
    rows = ["| method | roles that may call it |", "|---|---|"]
    for method, roles in METHOD_ROLES.items():
        rows.append(f"| `{short(method)}` | {', '.join(sorted(roles))} |")
    return "\n".join(rows) + "\n"
