"""What `helm install` prints and the runbook say only what is true: NOTES names the
hook Jobs that ran and says which are the operator's; docs/operations.md does not
promise that a PDB keeps a one-replica service up, and its scale-out steps for
metering are the ones the topic checks let through (metering's stored marks and
QM_TOPIC_PARTITIONS, ensure-topics' one count for every topic)."""

from __future__ import annotations

from typing import Any

import pytest

from quartermaster.topics import Topic
from services.metering import topic_check
from tests.deploy.chart import ROOT, render


def _notes(values: dict[str, Any]) -> str:
    return render(values)["quartermaster/templates/NOTES.txt"]


@pytest.mark.parametrize(
    ("values", "ran", "yours"),
    [
        ({}, ["migrate", "topics"], []),
        ({"migrations": {"enabled": False}}, ["topics"], ["Migrations are off"]),
        ({"topics": {"create": False}}, ["migrate"], ["Topics are not created"]),
        ({"migrations": {"enabled": False}, "topics": {"create": False}}, [],
         ["Migrations are off", "Topics are not created"]),
    ],
)  # fmt: skip
def test_notes_name_only_the_hook_jobs_that_ran(
    values: dict[str, Any], ran: list[str], yours: list[str]
) -> None:
    notes = _notes(values)
    for job in ("migrate", "topics"):
        assert (f"logs job/qm-quartermaster-{job}" in notes) == (job in ran), job
    assert ("ran as hook Jobs" in notes) == bool(ran)
    for line in ("Migrations are off", "Topics are not created"):
        assert (line in notes) == (line in yours), line


def _section(title: str) -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index(title)
    return " ".join(text[start : text.index("\n### ", start + len(title))].split())


def test_the_upgrade_section_says_a_drain_takes_a_lone_replica_down() -> None:
    upgrade = _section("### Upgrade")
    assert "whole service down" not in upgrade
    assert "A service with one replica is not kept up" in upgrade
    assert "the requests service runs one by default" in upgrade


def test_the_scale_runbook_follows_what_the_topic_checks_let_through() -> None:
    scale = _section("### Scale")
    assert "counts stay right" not in scale
    # what the worker refuses, as topic_check words it
    changed = topic_check.TopicMark("id", 24)
    found = topic_check.problems(
        topic_check.Stored(topic_check.TopicMark("id", 12), None, {0: 5}),
        topic_check.Observed(changed, {}, topic_check.TopicMark("t", 12), "compact"),
        Topic.USAGE.value, Topic.USAGE_TOTALS.value, 12,
    )  # fmt: skip
    assert any("the stored offsets were counted on 12" in p for p in found)
    assert any("QM_TOPIC_PARTITIONS is 12" in p for p in found)
    assert "exit 78" in scale or "exits 78" in scale
    # the steps that get through both checks and ensure-topics, in order
    steps = ["--replicas=0", "kafka-delete-records", "--alter --topic qm.usage.v1",
             "topics.create: false", "topic accept"]  # fmt: skip
    where = [scale.index(s) for s in steps]
    assert where == sorted(where), where
    assert "QM_METERING_DEDUPE_HOURS" in scale  # why the counted records go first
    assert "qm.usage.totals.v1" in scale  # and why the other topics are left alone
