"""Routing by amount: steps, N-of-M, one person once, the requester never, fallback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quartermaster.money import MICROS_PER_CREDIT as C
from services.requests.routing import (
    People,
    RoutingError,
    Source,
    StepRule,
    parse_rules,
    route,
)
from tests.requests.domain import PEOPLE, RULES


@pytest.mark.parametrize(
    ("credits", "names"),
    [(1, ["manager"]), (50, ["manager"]), (51, ["manager", "group_admins"]),
     (500, ["manager", "group_admins"]),
     (501, ["manager", "group_admins", "workspace_admins"])],
)  # fmt: skip
def test_steps_come_from_rules_by_amount(credits: int, names: list[str]) -> None:
    assert [s.name for s in route(credits * C, "rae", PEOPLE, RULES)] == names


def test_each_step_asks_level_0_and_escalates_up_its_chain() -> None:
    manager, admins, workspace = route(600 * C, "rae", PEOPLE, RULES)
    assert (manager.approvers, manager.escalations) == (("mia",), (("max",), ("mona",)))
    assert (admins.approvers, admins.escalations) == (("gus", "gia"), (("gil",),))
    assert (workspace.approvers, workspace.required) == (("wes", "wen"), 1)


def test_one_person_counts_once_across_steps() -> None:
    people = People({Source.MANAGER: (("gus",),), Source.GROUP_ADMINS: (("gus", "gia"),),
                     Source.WORKSPACE_ADMINS: (("gia", "wes"),)})  # fmt: skip
    steps = route(600 * C, "rae", people, RULES)
    assert [s.approvers for s in steps] == [("gus",), ("gia",), ("wes",)]


def test_the_requester_is_excluded_and_the_fallback_steps_in() -> None:
    people = People({Source.MANAGER: (("rae",), ("max",))})
    with pytest.raises(RoutingError, match="no fallback approver is configured"):
        route(C, "rae", people, RULES[:1])
    (step,) = route(C, "rae", people, RULES[:1], fallback="fin")
    assert step.approvers == ("fin",)
    assert step.escalations == (("max",),)


def test_a_fallback_who_is_the_requester_is_no_fallback() -> None:
    with pytest.raises(RoutingError, match="step manager: 1 approval"):
        route(C, "fin", People({}), RULES[:1], fallback="fin")


def test_too_few_for_n_of_m_is_refused_with_a_reason() -> None:
    rules = (StepRule(Source.GROUP_ADMINS, 0, 3),)
    with pytest.raises(RoutingError, match=r"3 approval.*only 2 eligible"):
        route(C, "rae", PEOPLE, rules)
    assert route(C, "rae", PEOPLE, rules, fallback="fin")[0].approvers == ("gus", "gia", "fin")


def test_rules_parse_from_settings_and_bad_ones_are_named() -> None:
    assert parse_rules("workspace_admins:1:500, manager:1:0,group_admins:2:50") == (
        StepRule(Source.MANAGER, 0, 1), StepRule(Source.GROUP_ADMINS, 50 * C, 2),
        StepRule(Source.WORKSPACE_ADMINS, 500 * C, 1),
    )  # fmt: skip
    bad_rules = [("boss:1:0", "unknown source 'boss'"), ("manager:1", "expected"),
                 ("manager:x:0", "whole numbers"), ("", "no rules"),
                 ("manager:0:0", "at least 1"), ("manager:1:-5", "not be negative")]  # fmt: skip
    for bad, words in bad_rules:
        with pytest.raises(ValueError, match=words):
            parse_rules(bad)


NAMES = st.sampled_from(["rae", "mia", "max", "gus", "gia", "wes", "fin", ""])
LEVELS = st.lists(st.lists(NAMES, max_size=3).map(tuple), max_size=3).map(tuple)


@given(
    amount=st.integers(1, 1000 * C),
    requester=NAMES.filter(bool),
    chains=st.fixed_dictionaries({s: LEVELS for s in Source}),
    fallback=NAMES,
    required=st.integers(1, 2),
)
def test_the_requester_is_never_an_approver_and_nobody_counts_twice(
    amount: int, requester: str, chains: dict[Source, tuple[tuple[str, ...], ...]],
    fallback: str, required: int,
) -> None:  # fmt: skip
    rules = tuple(StepRule(r.source, r.above_micros, required) for r in RULES)
    try:
        steps = route(amount, requester, People(chains), rules, fallback)
    except RoutingError:
        return
    asked = [p for s in steps for p in s.approvers]
    assert requester not in asked
    assert all(requester not in level for s in steps for level in s.escalations)
    assert len(asked) == len(set(asked))
    assert "" not in asked
    assert all(len(s.approvers) >= s.required for s in steps)
