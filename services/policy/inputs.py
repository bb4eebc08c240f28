"""What a valid request to each policy RPC is: every bad field, named, at once.

Each function adds to a quartermaster.validation.Problems collector (or returns a
new one); the servicer refuses the call with INVALID_ARGUMENT when any was found
(quartermaster.grpcserver.refuse). Pure: request messages in, problems out.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from quartermaster.v1 import policy_pb2
from quartermaster.validation import MAX_ID_LENGTH, Problems
from quartermaster.wire import from_timestamp
from services.policy.mapping import ENFORCEMENT_OF, KINDS

MAX_BATCH = 1000
MAX_TTL_SECONDS = 86_400
# Every amount a request carries (estimates, actual costs, limits, overrides): a
# billion credits. Larger is a typo or an attack, not a budget, and sums of such
# amounts would pass int64 (the wire's and PostgreSQL's bigint).
MAX_MICROS = 10**15
# The most one call may cost (Commit's actual_micros): one million credits, what
# metering accepts as one event (services/metering/bounds.py MAX_EVENT_MICROS; a
# service imports no other). The actual may exceed the estimate, as real calls do,
# but a call costing more is never metered: committing it would only hold the user's
# budget for the reservation's lifetime (issue 14 committed 10^15 a reservation).
MAX_CALL_MICROS = 10**12
MAX_REASON = 2000
MAX_DOCUMENT = 32 * 1024 * 1024
MAX_LIST = 1000  # ids in one repeated field (group_ids, admins, allowed models)
# Timestamps a request may carry: from 1970 to the end of 9999 (what a datetime holds).
MIN_SECONDS, MAX_SECONDS = 0, 253_402_300_799


def check(req: policy_pb2.CheckRequest, problems: Problems) -> None:
    """A CheckRequest's bad fields (under `problems.prefix`, in a batch)."""
    problems.require_id("user_id", req.user_id)
    problems.require_id("product", req.product)
    problems.require_id("model", req.model)
    problems.require_amount("estimated_micros", req.estimated_micros, MAX_MICROS)
    # Checked alike whether or not this call uses it (issue 14: without reserve a NUL
    # passed where with it, or invalid UTF-8, was refused); required with reserve.
    if req.reserve:
        problems.require_id("request_id", req.request_id)
    else:
        problems.require_text("request_id", req.request_id, MAX_ID_LENGTH)
    problems.require_between("reservation_ttl_seconds", req.reservation_ttl_seconds, 0,
                             MAX_TTL_SECONDS)  # fmt: skip


def check_batch(req: policy_pb2.CheckBatchRequest) -> Problems:
    """A CheckBatch: 1 to MAX_BATCH checks, none reserving; fields named by index."""
    problems = Problems()
    if not req.checks:
        problems.add("checks", "must not be empty")
    if len(req.checks) > MAX_BATCH:
        problems.add("checks", f"at most {MAX_BATCH}, got {len(req.checks)}")
    for i, c in enumerate(req.checks[:MAX_BATCH]):
        item = Problems(f"checks[{i}].")
        check(c, item)
        if c.reserve:
            item.add("reserve", "not supported in a batch; use Reserve")
        problems.extend(item)
    return problems


def reserve(req: policy_pb2.ReserveRequest) -> Problems:
    """A ReserveRequest's bad fields."""
    problems = Problems()
    for field in ("user_id", "product", "model", "request_id"):
        problems.require_id(field, getattr(req, field))
    problems.require_amount("estimated_micros", req.estimated_micros, MAX_MICROS)
    problems.require_between("ttl_seconds", req.ttl_seconds, 0, MAX_TTL_SECONDS)
    return problems


def commit(req: policy_pb2.CommitRequest) -> Problems:
    """A CommitRequest's bad fields."""
    problems = ids(reservation_id=req.reservation_id)
    if req.actual_micros > MAX_CALL_MICROS:
        problems.add("actual_micros", f"must be at most {MAX_CALL_MICROS} (one million credits,"
                     " the most one call may cost: metering meters no larger event)")  # fmt: skip
    else:
        problems.require_amount("actual_micros", req.actual_micros, MAX_CALL_MICROS)
    return problems


def find_user(req: policy_pb2.FindUserRequest) -> Problems:
    """A FindUser's two keys: each may be empty, neither long or unstorable (both
    were compared and echoed whole, NUL and a megabyte alike)."""
    problems = Problems()
    problems.require_text("slack_user_id", req.slack_user_id, MAX_ID_LENGTH)
    problems.require_text("email", req.email)
    return problems


def ids(**fields: str) -> Problems:
    """Problems of requests made of ids alone (GetBudget, Release, lookups...)."""
    problems = Problems()
    for name, value in fields.items():
        problems.require_id(name, value)
    return problems


def id_list(name: str, values: list[str], problems: Problems) -> None:
    """At most MAX_LIST ids, each named by index (`group_ids[2]`)."""
    problems.require_list(name, len(values), MAX_LIST)
    for i, v in enumerate(values[:MAX_LIST]):
        problems.require_id(f"{name}[{i}]", v)


def timestamp(
    name: str, ts: Timestamp, problems: Problems, present: bool = True
) -> datetime | None:
    """A Timestamp field as an aware datetime: None when absent (`present` False) or
    out of range (a problem then: 1970 to 9999, nanos below a second)."""
    if not present:
        return None
    if not (MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        problems.add(name, "must be a time between 1970 and 9999")
        return None
    return from_timestamp(ts)


def limit(
    micros: int, period: int, enforcement: int, prefix: str = "",
    period_required: bool = True, enforcement_required: bool = True,
) -> Problems:  # fmt: skip
    """A limit's amount, period and enforcement (each unset one is a problem when
    required)."""
    problems = Problems(prefix)
    problems.require_between("limit_micros", micros, 0, MAX_MICROS)
    unset = period == policy_pb2.PERIOD_UNSPECIFIED
    if not (period in KINDS or (unset and not period_required)):
        problems.add("period", "required, one of PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH")
    unset = enforcement == policy_pb2.ENFORCEMENT_UNSPECIFIED
    if not (enforcement in ENFORCEMENT_OF or (unset and not enforcement_required)):
        problems.add("enforcement", "required, ENFORCEMENT_HARD or ENFORCEMENT_SOFT")
    return problems


def reason(value: str, problems: Problems, field: str = "reason") -> None:
    """A reason must say something, in at most MAX_REASON characters."""
    if not value.strip():
        problems.add(field, "must say why")
    else:
        problems.require_text(field, value, MAX_REASON)


def override(
    o: policy_pb2.Override, now: datetime
) -> tuple[Problems, datetime, datetime | None, datetime | None]:
    """(problems, starts_at, expires_at, review_at) of a SetOverride's override."""
    problems = Problems("override.")
    problems.require_id("user_id", o.user_id)
    if o.override_id:
        problems.require_id("override_id", o.override_id)
    problems.extend(
        limit(o.limit_micros, o.period, o.enforcement, "override.",
              period_required=not o.additive, enforcement_required=False)
    )  # fmt: skip
    if o.additive and o.limit_micros == 0:
        problems.add("limit_micros", "an additive override must add something")
    if o.additive and o.period:
        problems.add("period", "an additive override takes the base limit's period")
    reason(o.reason, problems)
    problems.require_text("granted_by", o.granted_by, MAX_ID_LENGTH)
    if o.request_id:
        problems.add("request_id", "set only by approved credit requests")
    starts = timestamp("starts_at", o.starts_at, problems, o.HasField("starts_at")) or now
    expires = timestamp("expires_at", o.expires_at, problems, o.HasField("expires_at"))
    review = timestamp("review_at", o.review_at, problems, o.HasField("review_at"))
    if not (o.HasField("expires_at") or o.HasField("review_at")):
        problems.add("expires_at", "an override needs expires_at (temporary) or"
                     " review_at (permanent, reviewed)")  # fmt: skip
    if expires is not None and expires <= max(starts, now):
        problems.add("expires_at", "must be after starts_at and in the future")
    if review is not None and review <= now:
        problems.add("review_at", "must be in the future")
    return problems, starts, expires, review


def model_policy(p: policy_pb2.ModelPolicy, allowed: list[str]) -> Problems:
    """A SetModelPolicy's policy; `allowed`: its allowed models, stripped."""
    problems = Problems("policy.")
    problems.require_id("group_id", p.group_id)
    if any(not m for m in allowed):
        problems.add("allowed_models", "empty model name")
    else:
        id_list("allowed_models", allowed, problems)
    problems.require_text("fallback_model", p.fallback_model, MAX_ID_LENGTH)
    if not 0 <= p.fallback_at_percent <= 100:
        problems.add("fallback_at_percent", "must be between 0 and 100")
    if p.fallback_at_percent and not p.fallback_model:
        problems.add("fallback_model", "needed when fallback_at_percent is set")
    if p.fallback_model and allowed and p.fallback_model not in allowed:
        problems.add("fallback_model", "must be one of allowed_models")
    return problems


def document(req: policy_pb2.ImportDirectoryRequest) -> Problems:
    """An import's document: present and at most MAX_DOCUMENT bytes."""
    problems = Problems()
    if len(req.document) > MAX_DOCUMENT:
        problems.add("document", f"larger than {MAX_DOCUMENT} bytes")
    if not req.document:
        problems.add("document", "empty")
    return problems
