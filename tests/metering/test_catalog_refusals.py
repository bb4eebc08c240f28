"""What a breaker tried on the pricing side (issue 13, after items 1-7), without
infrastructure: catalogs that contradict themselves, instants no Timestamp holds,
files as spreadsheets write them, and proto3 JSON that named a tier no one knows.
Each kind was accepted (or misread) before; the same kinds against the real server
and worker are in test_pricing_attacks.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from quartermaster.topics import CONTENT_TYPE, JSON, PROTOBUF, USAGE_BATCH_TYPE
from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.decode import InvalidUsage, decode
from services.metering.pricing import CatalogError, PriceCatalog, parse_csv, parse_yaml
from services.metering.revisions import merge
from services.metering.settings import DEFAULT_PRICES

SHIPPED = PriceCatalog.from_file(DEFAULT_PRICES)
VERSION = '[{effective_from: "2025-01-01T00:00:00Z", input: 1, cached_input: 1, output: 1}]'


def doc(aliases: str, models: str = f"  gpt-5: {VERSION}\n  o3: {VERSION}\n") -> str:
    return f"models:\n{models}aliases:\n{aliases}"


def test_a_key_written_twice_is_refused_naming_it_and_both_lines() -> None:
    # yaml kept the later silently: the alias named o3 only, or gpt-5 lost its first list
    with pytest.raises(CatalogError, match=r"line 6: 'prod' is written twice in one mapping "
                                           r"\(first on line 5\)"):  # fmt: skip
        parse_yaml(doc("  prod: gpt-5\n  prod: o3\n"))
    with pytest.raises(CatalogError, match="line 3: 'gpt-5' is written twice"):
        parse_yaml(f"models:\n  gpt-5: {VERSION}\n  gpt-5: {VERSION}\n")
    with pytest.raises(CatalogError, match="'input' is written twice"):  # on one line
        parse_yaml("fallback: {input: 1, cached_input: 1, output: 1, input: 2}\n")
    # a merge key's values are meant to be overridden by the mapping's own
    merged = parse_yaml(
        "fallback: &base {input: 1, cached_input: 1, output: 1}\n"
        'models:\n  gpt-5: [{<<: *base, effective_from: "2025-01-01T00:00:00Z", input: 2}]\n'
    )
    assert merged.models["gpt-5"][0][1].input == 2


def test_two_models_claiming_one_alias_in_any_case_are_refused() -> None:
    with pytest.raises(CatalogError, match=r"'Prod' and 'prod' are one alias .* gpt-5 and o3"):
        parse_yaml(doc("  Prod: gpt-5\n  prod: o3\n"))
    # the same model twice in two cases is one alias, not a contradiction
    assert parse_yaml(doc("  Prod: gpt-5\n  prod: gpt-5\n")).aliases == {"prod": "gpt-5"}


@pytest.mark.parametrize(("aliases", "why"), [
    ("  o3: gpt-5\n", "alias o3 -> gpt-5: o3 is a model of the catalog"),
    ("  O3: gpt-5\n", "alias o3 -> gpt-5: o3 is a model of the catalog"),
    ('  "*": gpt-5\n', "alias \\* -> gpt-5: a glob of wildcards alone names every model id"),
    ('  "?*": gpt-5\n', "a glob of wildcards alone"),
    ('  "[a-z]*": gpt-5\n', "a glob of wildcards alone"),
])  # fmt: skip
def test_an_alias_that_could_never_apply_or_would_hide_unknown_models_is_refused(
    aliases: str, why: str
) -> None:
    """Loaded on top of the shipped catalog, and as a whole new one."""
    loaded = parse_yaml(doc(aliases))
    with pytest.raises(CatalogError, match=why):
        merge(SHIPPED, loaded, replace=False)
    whole = parse_yaml(f"fallback: {{input: 1, cached_input: 1, output: 1}}\n{doc(aliases)}")
    with pytest.raises(CatalogError, match=why):
        merge(SHIPPED, whole, replace=True)


def test_a_glob_with_a_literal_part_and_a_stored_revision_still_load() -> None:
    loaded = merge(SHIPPED, parse_yaml(doc('  "gpt-5-*-eastus": gpt-5\n')), replace=False)
    assert loaded.resolve("gpt-5-prod-eastus") == "gpt-5"
    assert loaded.resolve("gpt-6") is None  # unknown ones are still flagged
    # A revision stored before these refusals is still read (a worker must start).
    raw = SHIPPED.to_mapping()
    raw["aliases"] = {"*": "gpt-5"}
    assert PriceCatalog.from_mapping(raw).resolve("anything") == "gpt-5"


@pytest.mark.parametrize("when", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+05:00"])
def test_an_effective_from_outside_what_a_timestamp_holds_is_refused(when: str) -> None:
    """Accepted before; ListPrices then sent a Timestamp past year 9999 (or before 1)."""
    text = (
        f'models:\n  gpt-5: [{{effective_from: "{when}", input: 1, cached_input: 1, output: 1}}]\n'
    )
    with pytest.raises(CatalogError, match=f"{when[:4]}.* is outside years 1 to 9999 in UTC"):
        parse_yaml(text)


def test_a_csv_as_a_spreadsheet_saves_it() -> None:
    header = "model,effective_from,input,cached_input,output\n"
    rows = "gpt-5,2025-08-07T00:00:00Z,1250000,125000,10000000\n"
    # Excel's "CSV UTF-8" starts with a byte-order mark: "header lacks model" before
    assert parse_csv("\ufeff" + header + rows).models["gpt-5"][0][1].input == 1_250_000
    with pytest.raises(CatalogError, match=r"header lacks column\(s\) .* \(separated by ';'\?"):
        parse_csv((header + rows).replace(",", ";"))


NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
JSON_HEADERS = {CONTENT_TYPE: JSON}


def event_json(**fields: object) -> dict[str, object]:
    return {"eventId": "e1", "userId": "u", "product": "chat", "model": "gpt-5",
            "occurredAt": "2026-11-30T12:00:00Z", "inputTokens": 1000, "outputTokens": 500,
            **fields}  # fmt: skip


def test_an_unknown_service_tier_in_json_is_refused_as_in_protobuf() -> None:
    """ParseDict ignoring unknown names made SERVICE_TIER_BACTH the standard tier: a
    batch event priced at twice its price, silently (protobuf's unknown 99 is refused)."""
    value = json.dumps(event_json(serviceTier="SERVICE_TIER_BACTH")).encode()
    with pytest.raises(InvalidUsage, match="service_tier: unknown tier 'SERVICE_TIER_BACTH'"):
        decode(value, JSON_HEADERS, NOW, timedelta(days=30))
    batch = json.dumps({"events": [event_json(), event_json(service_tier="FLEX")]}).encode()
    headers = {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}
    with pytest.raises(InvalidUsage, match=r"events\[1\].service_tier: unknown tier 'FLEX'"):
        decode(batch, headers, NOW, timedelta(days=30))
    ok = json.dumps(event_json(serviceTier="SERVICE_TIER_FLEX")).encode()
    assert decode(ok, JSON_HEADERS, NOW, timedelta(days=30)).events[0].service_tier == 3


@pytest.mark.parametrize("field", ["ending", "serviceTier", "service_tier"])
def test_any_enum_name_usage_lacks_is_refused_in_an_event_and_in_a_batch(field: str) -> None:
    """The kind of the tier's fault: every enum of UsageEvent (the call's ending too: an
    unknown one was counted as a completed call), in one event and in a batch, by the
    fast JSON path and the one ParseDict takes (a key it must judge: `[ext]`)."""
    noun = "ending" if field == "ending" else "tier"
    name = "ending" if field == "ending" else "service_tier"
    for extra in ({}, {"[ext.field]": 1}):
        one = json.dumps(event_json(**{field: "CALL_ENDED_WEIRDLY"}, **extra)).encode()
        with pytest.raises(InvalidUsage, match=f"{name}: unknown {noun} 'CALL_ENDED_WEIRDLY'"):
            decode(one, JSON_HEADERS, NOW, timedelta(days=30))
    batch = json.dumps({"events": [event_json(), event_json(**{field: "7x"})]}).encode()
    headers = {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}
    with pytest.raises(InvalidUsage, match=rf"events\[1\].{name}: unknown {noun} '7x'"):
        decode(batch, headers, NOW, timedelta(days=30))


@pytest.mark.parametrize(("fields", "why"), [
    ({"audioInputTokens": -5}, "audio_input_tokens: must not be negative"),
    ({"cacheWrite1hInputTokens": "-1"}, "cache_write_1h_input_tokens: must not be negative"),
    ({"audioOutputTokens": 1.5}, "audioOutputTokens: expected an integer .*, got 1.5"),
    ({"audioOutputTokens": True}, "audioOutputTokens: expected an integer .*, got true"),
    ({"audioInputTokens": 2**63}, "audioInputTokens: Value out of range: 9223372036854775808"),
    ({"cacheWrite1hInputTokens": 10}, "more than cache_write_input_tokens"),
    ({"audioInputTokens": 1001}, "more than the input_tokens neither cached nor cache-written"),
])  # fmt: skip
def test_bad_token_classes_in_json_are_refused_naming_the_field(
    fields: dict[str, object], why: str
) -> None:
    with pytest.raises(InvalidUsage, match=why):
        decode(json.dumps(event_json(**fields)).encode(), JSON_HEADERS, NOW, timedelta(days=30))


def test_missing_or_null_classes_in_json_are_none_of_that_class() -> None:
    value = json.dumps(event_json(audioInputTokens=None)).encode()
    event = decode(value, JSON_HEADERS, NOW, timedelta(days=30)).events[0]
    assert (event.audio_input_tokens, event.cache_write_1h_input_tokens) == (0, 0)


def test_every_shipped_alias_is_one_the_checks_accept() -> None:
    raw = yaml.safe_load(DEFAULT_PRICES.read_text())
    assert merge(None, parse_yaml(yaml.safe_dump(raw)), replace=True).aliases == SHIPPED.aliases


@pytest.mark.parametrize(("field", "name", "noun", "enum"), [
    ("ending", "ending", "ending", "CallEnding"),
    ("serviceTier", "service_tier", "tier", "ServiceTier"),
])  # fmt: skip
def test_an_unknown_enum_number_is_refused_for_every_enum_on_every_path(
    field: str, name: str, noun: str, enum: str
) -> None:
    """`ending: 99` was counted while `serviceTier: 99` was refused: every enum of
    UsageEvent now refuses a number its schema lacks, in JSON (fast path, ParseDict's
    path, a batch) and in protobuf (proto3 keeps unknown numbers), naming the field."""
    why = f"{name}: unknown {noun} 99 (see {enum})"
    for extra in ({}, {"[ext.field]": 1}):
        one = json.dumps(event_json(**{field: 99}, **extra)).encode()
        with pytest.raises(InvalidUsage, match=re.escape(why)):
            decode(one, JSON_HEADERS, NOW, timedelta(days=30))
    batch = json.dumps({"events": [event_json(), event_json(**{field: 99})]}).encode()
    headers = {CONTENT_TYPE: f"{JSON}; type={USAGE_BATCH_TYPE}"}
    with pytest.raises(InvalidUsage, match=re.escape(f"events[1].{why}")):  # as a bad name
        decode(batch, headers, NOW, timedelta(days=30))
    event = UsageEvent(event_id="e1", user_id="u", product="chat", model="gpt-5",
                       input_tokens=10, output_tokens=5)  # fmt: skip
    event.occurred_at.FromDatetime(NOW)
    setattr(event, name, 99)
    with pytest.raises(InvalidUsage, match=re.escape(why)):
        decode(event.SerializeToString(), {CONTENT_TYPE: PROTOBUF}, NOW, timedelta(days=30))
    setattr(event, name, 2)  # a known one is counted
    assert decode(event.SerializeToString(), {CONTENT_TYPE: PROTOBUF}, NOW,
                  timedelta(days=30)).events  # fmt: skip


@pytest.mark.parametrize("text", ["\x1b", "models: {}\x07", "\ufffe", "a: b\x00"])
def test_a_document_with_a_control_character_is_refused_naming_it(text: str) -> None:
    """yaml's reader refuses these while it is made, before parsing (a fuzz test's
    LoadPrices of "\\x1b" answered INTERNAL)."""
    from services.metering.catalog_limits import load_yaml

    with pytest.raises(ValueError, match="not a YAML document the catalog reads"):
        load_yaml(text)
