"""Routing: which people must approve a credit request, in which steps. Pure.

Rules are configured by amount: each `StepRule` applies when the amount asked is above
its `above_micros` (so "up to 50 credits: the manager; up to 500: then the department's
group admin; above: a workspace admin" is three rules above 0, 50 and 500 credits). A
step needs `required` of its approvers (N-of-M); one deny ends the request.

Who the approvers are comes from policy's directory (`People`, read by the caller):
for each source, a chain of levels, nearest first (the manager, their manager, ...;
the department's group admins, the parent group's, ...). Level 0 is asked first; the
later levels are where a step escalates to.

Invariants (tested with hypothesis): the requester is never an approver of any step,
on any level; one person counts once across steps (a person eligible for two steps is
asked in the first only). When a step has too few eligible people, the configured
fallback approver joins it; when that still is not enough the request is refused
with a reason naming the step (`RoutingError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from quartermaster.money import MICROS_PER_CREDIT


class Source(StrEnum):
    """Where a step's approvers come from."""

    MANAGER = "manager"
    GROUP_ADMINS = "group_admins"
    WORKSPACE_ADMINS = "workspace_admins"


class RoutingError(ValueError):
    """No eligible approvers for a step, even with the fallback: the request is refused."""


@dataclass(frozen=True)
class StepRule:
    """A step that applies to amounts above `above_micros`, needing `required` approvals
    from `source`."""

    source: Source
    above_micros: int = 0
    required: int = 1

    def __post_init__(self) -> None:
        if self.above_micros < 0:
            raise ValueError(f"{self.source}: above_micros must not be negative")
        if self.required < 1:
            raise ValueError(f"{self.source}: required must be at least 1")


def parse_rules(spec: str) -> tuple[StepRule, ...]:
    """`source:required:above_credits,...` (e.g. `manager:1:0,group_admins:1:50,
    workspace_admins:1:500`) as rules ordered by `above`; ValueError names the bad part."""
    rules = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        bits = part.split(":")
        if len(bits) != 3:
            raise ValueError(f"{part!r}: expected source:required:above_credits")
        try:
            source = Source(bits[0])
        except ValueError:
            names = ", ".join(s.value for s in Source)
            raise ValueError(f"{part!r}: unknown source {bits[0]!r} (one of {names})") from None
        try:
            required, above = int(bits[1]), int(bits[2])
        except ValueError:
            raise ValueError(f"{part!r}: required and above_credits are whole numbers") from None
        rules.append(StepRule(source, above * MICROS_PER_CREDIT, required))
    if not rules:
        raise ValueError("no rules: at least one step is needed")
    return tuple(sorted(rules, key=lambda r: r.above_micros))


@dataclass(frozen=True)
class People:
    """The requester's approvers as the directory has them: per source, levels nearest
    first (level 0 is asked; later levels are escalations)."""

    chains: Mapping[Source, Sequence[Sequence[str]]] = field(default_factory=dict)

    def level(self, source: Source, index: int) -> tuple[str, ...]:
        """The people at `index` of the source's chain (empty past its end)."""
        chain = self.chains.get(source, ())
        return tuple(chain[index]) if index < len(chain) else ()


@dataclass(frozen=True)
class PlannedStep:
    """A step as routing made it: who is asked now and who escalation reaches next."""

    name: str
    approvers: tuple[str, ...]
    required: int
    # Levels of the chain still to escalate to, each already cleaned (no requester,
    # nobody counted in another step).
    escalations: tuple[tuple[str, ...], ...]


def eligible(people: Sequence[str], requester: str, taken: set[str]) -> tuple[str, ...]:
    """`people` without the requester, anyone in `taken`, blanks and repeats (order kept)."""
    out: list[str] = []
    for p in people:
        if p and p != requester and p not in taken and p not in out:
            out.append(p)
    return tuple(out)


def route(
    amount_micros: int,
    requester: str,
    people: People,
    rules: Sequence[StepRule],
    fallback: str = "",
) -> tuple[PlannedStep, ...]:
    """The steps for a request of `amount_micros` by `requester`, in order.

    Raises RoutingError when a step can't have `required` eligible approvers even with
    `fallback` (who is never the requester either)."""
    steps: list[PlannedStep] = []
    taken: set[str] = set()
    for rule in rules:
        if amount_micros <= rule.above_micros:
            continue
        approvers = eligible(people.level(rule.source, 0), requester, taken)
        if len(approvers) < rule.required:
            approvers += eligible([fallback], requester, taken | set(approvers))
        if len(approvers) < rule.required:
            raise RoutingError(
                f"step {rule.source}: {rule.required} approval(s) needed, but only "
                f"{len(approvers)} eligible approver(s) besides the requester"
                + ("" if fallback else ", and no fallback approver is configured")
            )
        taken.update(approvers)
        chain = people.chains.get(rule.source, ())
        escalations = tuple(
            level
            for level in (eligible(chain[i], requester, taken) for i in range(1, len(chain)))
            if level
        )
        steps.append(PlannedStep(rule.source.value, approvers, rule.required, escalations))
    if not steps:
        raise RoutingError("no approval step applies to this amount")
    return tuple(steps)
