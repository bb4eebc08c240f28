"""Model identity (issue 13, item 1): every form a model id takes in real traffic
finds its catalog model; a snapshot priced on its own keeps its price; unknown ids
stay unknown."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quartermaster.model_ids import allows, candidates, resolve_model
from services.metering.pricing import CatalogError, PriceCatalog, Tokens
from services.metering.settings import DEFAULT_PRICES

CATALOG = PriceCatalog.from_file(DEFAULT_PRICES)
KEYS = sorted(CATALOG.models)
NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def tokens(inp: int, out: int = 0) -> Tokens:
    return Tokens(input=inp, cached_input=0, output=out, reasoning=0)


def priced(model: str, inp: int, out: int) -> tuple[int, bool]:
    got = CATALOG.price(model, NOW, tokens(inp, out))
    return got.micros, got.fallback


@pytest.mark.parametrize(("model", "micros"), [
    ("gpt-5-2025-08-07", 11_250),  # the fallback priced it at 25,000
    ("openai/gpt-5", 11_250),
    ("azure/gpt-5", 11_250),
    ("GPT-5", 11_250),
    ("gpt5-prod-eastus", 11_250),  # the shipped catalog's alias of an Azure deployment
    ("claude-opus-4-1-20250805", 90_000),
    ("anthropic/claude-opus-4-1", 90_000),
    ("claude-sonnet-4-5-20250929", 18_000),
    ("claude-sonnet-4-5-latest", 18_000),
    ("claude-sonnet-4-5@20250929", 18_000),  # Vertex
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", 18_000),  # Bedrock, cross-region
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", 18_000),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", 18_000),
    ("gpt-5-mini-2025-08-07", 2_250),
    ("openai:gpt-5", 11_250),  # pydantic-ai's form: the fallback priced it (25,000)
    ("anthropic:claude-sonnet-4-5-20250929", 18_000),
    ("bedrock:us.anthropic.claude-sonnet-4-5-20250929-v1:0", 18_000),
])  # fmt: skip
def test_real_traffic_ids_are_priced_as_their_catalog_model(model: str, micros: int) -> None:
    """1,000 tokens in and 1,000 out."""
    assert priced(model, 1000, 1000) == (micros, False)


@pytest.mark.parametrize("model", [
    "gpt-6", "my-own-model", "gpt-5x", "mini", "x/y/z",
    # other offerings under a known name, priced otherwise: unknown until cataloged
    "gpt-5-nano", "gpt-5-pro", "o3-mini", "o3-pro", "gpt-5-chat-latest",
    "ft:gpt-5:acme::abc123", "gpt-5:free", "openai/gpt-5:online", "acme:gpt-5",
    "claude-sonnet-4-5-20250929-thinking", "gpt\u20115", "\uff47\uff50\uff54-5",
])  # fmt: skip
def test_unknown_ids_stay_unknown_and_are_flagged(model: str) -> None:
    assert priced(model, 1000, 1000) == (25_000, True)


def test_a_snapshot_priced_on_its_own_keeps_its_price_over_its_family() -> None:
    raw = CATALOG.to_mapping()
    raw["models"]["gpt-5-2025-08-07"] = [
        {
            "effective_from": "2025-08-07T00:00:00Z",
            "input": 1_000_000,
            "cached_input": 100_000,
            "output": 8_000_000,
        }
    ]
    catalog = PriceCatalog.from_mapping(raw)
    assert catalog.price("gpt-5-2025-08-07", NOW, tokens(1000, 1000)).micros == 9_000
    assert catalog.price("openai/gpt-5-2025-08-07", NOW, tokens(1000)).micros == 1_000
    assert catalog.price("gpt-5", NOW, tokens(1000, 1000)).micros == 11_250


def test_aliases_globs_and_their_refusals() -> None:
    raw = CATALOG.to_mapping()
    raw["aliases"] = {"Team-GPT": "gpt-5", "ft:gpt-5-mini:*": "gpt-5-mini"}
    catalog = PriceCatalog.from_mapping(raw)
    assert catalog.resolve("team-gpt") == "gpt-5"
    assert catalog.resolve("ft:gpt-5-mini:acme:support:abc123") == "gpt-5-mini"
    raw["aliases"] = {"team-gpt": "gpt-9"}
    with pytest.raises(CatalogError, match="aliases name models the catalog lacks: team-gpt"):
        PriceCatalog.from_mapping(raw)
    raw["aliases"] = ["team-gpt"]
    with pytest.raises(CatalogError, match="aliases must map"):
        PriceCatalog.from_mapping(raw)


def test_a_model_policy_allowing_a_family_allows_its_snapshots_not_the_reverse() -> None:
    assert allows({"gpt-5"}, "gpt-5-2025-08-07")
    assert allows({"gpt-5"}, "openai/gpt-5")
    assert not allows({"gpt-5-2025-08-07"}, "gpt-5")
    assert not allows({"gpt-5"}, "gpt-5-mini")
    assert not allows({"gpt-5"}, "gpt-5-mini-2025-08-07")


def test_candidates_never_repeat_and_blank_yields_nothing() -> None:
    assert list(candidates("")) == []
    forms = list(candidates("US.Anthropic.Claude-Sonnet-4-5-20250929-v1:0"))
    assert len(forms) == len(set(forms))
    assert forms[-1] == "claude-sonnet-4-5"


# Every form a provider or gateway gives a catalog model, built around its key.
PREFIXES = st.sampled_from(["", "openai/", "anthropic/", "azure/", "openrouter/openai/",
                            "vertex_ai/", "bedrock/", "openai:", "anthropic:", "azure:",
                            "openrouter/anthropic:"])  # fmt: skip
DATES = st.sampled_from(["", "-2025-08-07", "-20250805", "-0613", "-latest", "@20250929"])
CASES = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])


@given(st.sampled_from(KEYS), PREFIXES, DATES, CASES)
def test_every_alias_form_of_every_catalog_model_resolves_to_it(
    key: str, prefix: str, date: str, case: object
) -> None:
    raw = case(f"{prefix}{key}{date}")  # type: ignore[operator]
    assert resolve_model(raw, CATALOG.models) == key, raw


@given(st.sampled_from([k for k in KEYS if k.startswith("claude")]),
       st.sampled_from(["", "us.", "eu.", "apac.", "global."]),
       st.sampled_from(["-20250929", ""]), st.sampled_from(["-v1:0", "-v2", ""]))  # fmt: skip
def test_every_bedrock_form_of_every_anthropic_model_resolves_to_it(
    key: str, region: str, date: str, version: str
) -> None:
    raw = f"{region}anthropic.{key}{date}{version}"
    assert resolve_model(raw, CATALOG.models) == key, raw


@given(st.text(max_size=80))
def test_any_text_resolves_to_a_catalog_model_or_to_none(raw: str) -> None:
    got = resolve_model(raw, CATALOG.models)
    assert got is None or got in CATALOG.models
