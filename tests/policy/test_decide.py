from __future__ import annotations

import pytest

from quartermaster.money import credits
from quartermaster.v1 import policy_pb2
from services.policy.decide import Enforcement, Limit, decide

HARD = Limit(10_000_000, Enforcement.HARD, "workspace_default")
SOFT = Limit(10_000_000, Enforcement.SOFT, "workspace_default")


@pytest.mark.parametrize(
    ("used", "estimated", "limit", "decision", "reason"),
    [
        (0, 0, HARD, policy_pb2.DECISION_ALLOW, "within budget: 0.00 of 10.00"),
        (7_999_999, 0, HARD, policy_pb2.DECISION_ALLOW, "within budget"),
        (8_000_000, 0, HARD, policy_pb2.DECISION_WARN, "80% or more"),
        (9_000_000, 1_000_000, HARD, policy_pb2.DECISION_WARN, "80% or more"),
        (9_000_000, 1_000_001, HARD, policy_pb2.DECISION_DENY, "would pass the limit"),
        (10_000_000, 0, HARD, policy_pb2.DECISION_DENY, "limit reached: 10.00 of 10.00"),
        (12_000_000, 0, SOFT, policy_pb2.DECISION_WARN, "allowed by a soft limit"),
        (0, 0, Limit(0, Enforcement.HARD, "x"), policy_pb2.DECISION_DENY, "limit reached"),
    ],
)
def test_decisions(used: int, estimated: int, limit: Limit, decision: int, reason: str) -> None:
    got, why = decide(used, limit, estimated, warn_percent=80)
    assert got == decision
    assert reason in why


def test_credits_are_shown_exactly_with_two_decimals() -> None:
    assert credits(0) == "0.00"
    assert credits(1_234_567) == "1.23"
    assert credits(1_235_000) == "1.24"
    assert credits(-5_000_000) == "-5.00"
