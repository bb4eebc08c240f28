from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.metering.pricing import (
    CatalogError,
    Price,
    PriceCatalog,
    Tokens,
    cost_micros,
    parse_csv,
)
from services.metering.revisions import changes
from services.metering.settings import DEFAULT_PRICES

CATALOG = {
    "fallback": {"input": 5_000_000, "cached_input": 2_500_000, "output": 20_000_000},
    "models": {
        "m": [
            {"effective_from": "2026-01-01T00:00:00Z", "input": 1_000_000, "cached_input": 100_000,
             "output": 4_000_000},
            {"effective_from": "2026-06-01T00:00:00Z", "input": 500_000, "cached_input": 50_000,
             "output": 2_000_000, "reasoning": 3_000_000},
        ]
    },
}  # fmt: skip


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_each_token_is_priced_once_in_its_most_specific_class() -> None:
    price = Price(
        input=1_000_000, cached_input=100_000, output=4_000_000, reasoning=3_000_000,
        cache_write=1_250_000,
    )  # fmt: skip
    # 1000 input of which 400 cached; 500 output of which 200 reasoning
    tokens = Tokens(input=1000, cached_input=400, output=500, reasoning=200)
    expected = 600 * 1 + 400 * 0.1 + 300 * 4 + 200 * 3
    assert cost_micros(price, tokens) == expected == 2440


def test_cache_writes_are_priced_as_their_own_class() -> None:
    price = Price(input=3_000_000, cached_input=0, output=0, reasoning=0, cache_write=4_000_000)
    # 1000 input: 600 read from the cache (free here), 300 written to it, 100 plain
    tokens = Tokens(input=1000, cached_input=600, output=0, reasoning=0, cache_write=300)
    assert cost_micros(price, tokens) == 100 * 3 + 300 * 4


def test_cache_write_defaults_to_the_input_price() -> None:
    cat = PriceCatalog.from_mapping(CATALOG)
    price, _ = cat.price_at("m", at("2026-02-01T00:00:00"))
    assert price.cache_write == price.input == 1_000_000


def test_rounding_is_half_up_once_per_event() -> None:
    price = Price(input=1, cached_input=0, output=0, reasoning=0, cache_write=0)
    assert cost_micros(price, Tokens(499_999, 0, 0, 0)) == 0
    assert cost_micros(price, Tokens(500_000, 0, 0, 0)) == 1


def test_the_price_in_force_at_occurred_at_is_used() -> None:
    cat = PriceCatalog.from_mapping(CATALOG)
    tokens = Tokens(input=1_000_000, cached_input=0, output=0, reasoning=0)
    assert cat.price("m", at("2026-05-31T23:59:59"), tokens).micros == 1_000_000
    assert cat.price("m", at("2026-06-01T00:00:00"), tokens).micros == 500_000


def test_reasoning_defaults_to_the_output_price() -> None:
    cat = PriceCatalog.from_mapping(CATALOG)
    price, fallback = cat.price_at("m", at("2026-02-01T00:00:00"))
    assert (price.reasoning, fallback) == (4_000_000, False)


def test_unknown_model_and_time_before_first_price_use_the_fallback_and_say_so() -> None:
    cat = PriceCatalog.from_mapping(CATALOG)
    tokens = Tokens(input=1_000_000, cached_input=0, output=0, reasoning=0)
    unknown = cat.price("nobody-knows", at("2026-07-01T00:00:00"), tokens)
    early = cat.price("m", at("2025-12-31T00:00:00"), tokens)
    assert unknown.micros == early.micros == 5_000_000
    assert unknown.fallback
    assert early.fallback


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.pop("fallback"), "a whole catalog needs a 'fallback' price"),
        (lambda c: c.update(extra=1), "unknown top-level key(s) ['extra']"),
        (lambda c: c["fallback"].update(input=-1), "fallback.input: expected a whole number >= 0"),
        (lambda c: c["fallback"].update(input=1.5), "fallback.input: expected a whole number >= 0"),
        (lambda c: c["models"]["m"][0].update(colour=1), "unknown token class(es) ['colour']"),
        (lambda c: c["models"]["m"][0].update(effective_from="soon"), "not an ISO-8601 time"),
        (
            lambda c: c["models"]["m"][0].update(effective_from="2026-01-01T00:00:00"),
            "needs a time zone",
        ),
        (
            lambda c: c["models"]["m"][1].update(effective_from="2026-01-01T00:00:00Z"),
            "two versions take effect",
        ),
        (lambda c: c["models"].update(m=[]), "models.m: expected a list of versions"),
    ],
)
def test_bad_catalogs_are_refused_with_the_place_named(mutate: object, message: str) -> None:
    import copy

    raw = copy.deepcopy(CATALOG)
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(CatalogError, match=None) as info:
        PriceCatalog.from_mapping(raw)
    assert message in str(info.value)


def test_the_shipped_catalog_loads_and_prices_known_models() -> None:
    cat = PriceCatalog.from_file(DEFAULT_PRICES)
    priced = cat.price("gpt-5", at("2026-11-01T00:00:00"), Tokens(1000, 0, 500, 0))
    assert priced.micros == 1000 * 1.25 + 500 * 10 == 6250
    assert not priced.fallback


def test_a_missing_catalog_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope\.yaml"):
        PriceCatalog.from_file(tmp_path / "nope.yaml")


CSV = """model,effective_from,input,cached_input,cache_write,output,reasoning
*,,5000000,2500000,,20000000,
m,2026-01-01T00:00:00Z,1000000,100000,,4000000,
m,2026-06-01T00:00:00Z,500000,50000,,2000000,3000000
"""


def test_a_csv_catalog_is_the_same_catalog_as_its_yaml(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(CSV)
    from_csv = PriceCatalog.from_file(path)
    assert from_csv.to_mapping() == PriceCatalog.from_mapping(CATALOG).to_mapping()
    # to_mapping spells every class out and reads back as the same catalog
    again = PriceCatalog.from_mapping(from_csv.to_mapping())
    assert again.to_mapping() == from_csv.to_mapping()
    assert again.price_at("m", at("2026-07-01T00:00:00"))[0].reasoning == 3_000_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no rows under a header"),
        ("model,input\nm,1\n", "header lacks column(s) ['cached_input', 'effective_from', "),
        (CSV.replace("1000000,100000", "1000000,lots"), "line 3.cached_input: not a whole number"),
        (CSV + "*,,1,1,,1,\n", "line 5: a second fallback row"),
        (CSV + "m,2026-02-01T00:00:00Z,1,1,,1,,9\n", "line 5: more fields than the header"),
        # the line, not models.m[1] (issue 13)
        (
            CSV.replace("m,2026-06-01", "m,2026-01-01"),
            "prices.csv: line 4: a second m version from 2026-01-01T00:00:00+00:00 (the first on "
            "line 3): keep one",
        ),
    ],
)
def test_bad_csv_catalogs_name_the_line(text: str, message: str) -> None:
    with pytest.raises(CatalogError) as info:
        PriceCatalog.whole(parse_csv(text, "prices.csv"))
    assert message in str(info.value)


# -- long-context tiers (issue 13, item 2) ---------------------------------------------

TIERED = {
    "fallback": {"input": 1, "cached_input": 1, "output": 1},
    "models": {"s": [{
        "effective_from": "2026-01-01T00:00:00Z", "input": 3_000_000, "cached_input": 300_000,
        "cache_write": 3_750_000, "output": 15_000_000,
        "long_context": {"above_input_tokens": 200_000, "input": 6_000_000,
                         "cached_input": 600_000, "output": 22_500_000},
    }]},
}  # fmt: skip
AT = datetime(2026, 2, 1, tzinfo=UTC)


def test_past_the_threshold_every_token_of_the_request_is_at_the_tiers_prices() -> None:
    catalog = PriceCatalog.from_mapping(TIERED)
    at_threshold = Tokens(input=200_000, cached_input=0, output=1000, reasoning=0)
    assert catalog.price("s", AT, at_threshold).micros == 600_000 + 15_000
    past = Tokens(input=250_000, cached_input=50_000, output=1000, reasoning=0,
                  cache_write=10_000)  # fmt: skip
    # 190,000 x 6 + 50,000 x 0.6 + 10,000 x 6 (cache_write defaults to the tier's input)
    # + 1,000 x 22.5
    assert catalog.price("s", AT, past).micros == 1_140_000 + 30_000 + 60_000 + 22_500


def test_a_tier_survives_storage_and_loads_and_is_told_in_the_changes() -> None:
    catalog = PriceCatalog.from_mapping(TIERED)
    again = PriceCatalog.from_mapping(catalog.to_mapping())
    assert again.models == catalog.models
    raised = {**TIERED, "models": {"s": [{**TIERED["models"]["s"][0],  # type: ignore[index]
                                          "long_context": {"above_input_tokens": 128_000,
                                                           "input": 6_000_000, "cached_input": 1,
                                                           "output": 1}}]}}  # fmt: skip
    lines = changes(catalog, PriceCatalog.from_mapping(raised), AT)
    assert lines == [
        "s: version from 2026-01-01T00:00:00+00:00: long_context.above_input_tokens 200000"
        " -> 128000, long_context.cached_input 600000 -> 1, long_context.output 22500000 -> 1,"
        " long_context.reasoning 22500000 -> 1, long_context.audio_output 22500000 -> 1"
        " (already in force: it prices events counted from now on, not those counted before)"
    ]


@pytest.mark.parametrize(("tier", "problem"), [
    ({"input": 1, "cached_input": 1, "output": 1}, "above_input_tokens: expected a whole number"),
    ({"above_input_tokens": 0, "input": 1, "cached_input": 1, "output": 1}, "above_input_tokens"),
    ({"above_input_tokens": 5, "input": 1, "cached_input": 1, "output": 1,
      "long_context": {}}, "unknown token class(es) ['long_context']"),
    ({"above_input_tokens": 5, "input": 1, "output": 1}, "long_context.cached_input"),
    ([1, 2], "long_context: expected a mapping"),
])  # fmt: skip
def test_a_bad_tier_is_refused_naming_the_place(tier: object, problem: str) -> None:
    bad = {**TIERED, "models": {"s": [{**TIERED["models"]["s"][0], "long_context": tier}]}}  # type: ignore[index]
    with pytest.raises(CatalogError, match=r"models\.s") as err:
        PriceCatalog.from_mapping(bad)
    assert problem in str(err.value), err.value


SERVICE_TIERED = {
    "fallback": {"input": 1, "cached_input": 1, "output": 1},
    "models": {"m": [{
        "effective_from": "2026-01-01T00:00:00Z", "input": 2_000_000, "cached_input": 500_000,
        "output": 8_000_000, "cache_write_1h": 4_000_000, "audio_input": 40_000_000,
        "service_tiers": {"batch": {"input": 1_000_000, "cached_input": 250_000,
                                    "output": 4_000_000}},
    }]},
}  # fmt: skip


def test_service_tiers_and_the_newer_classes_are_read_stored_and_told() -> None:
    catalog = PriceCatalog.from_mapping(SERVICE_TIERED)
    assert PriceCatalog.from_mapping(catalog.to_mapping()).models == catalog.models
    price = catalog.models["m"][0][1]
    # left out: audio_output takes output's price; a tier's classes default within it
    assert (price.cache_write_1h, price.audio_input, price.audio_output) == (
        4_000_000, 40_000_000, 8_000_000,
    )  # fmt: skip
    batch = price.at_tier("batch")
    assert (batch.input, batch.cache_write, batch.cache_write_1h) == (1_000_000,) * 3
    assert price.at_tier("priority") is price  # not listed: the standard prices
    t = Tokens(input=1000, cached_input=0, output=1000, reasoning=0, service_tier="batch")
    assert catalog.price("m", AT, t).micros == 1000 + 4000
    raised = {**SERVICE_TIERED, "models": {"m": [{**SERVICE_TIERED["models"]["m"][0],  # type: ignore[index]
              "service_tiers": {"batch": {"input": 900_000, "cached_input": 250_000,
                                          "output": 4_000_000}}}]}}  # fmt: skip
    (line,) = changes(catalog, PriceCatalog.from_mapping(raised), AT)
    assert "service_tiers.batch.input 1000000 -> 900000" in line


@pytest.mark.parametrize(("tiers", "named"), [
    ({"scale": {"input": 1, "cached_input": 1, "output": 1}},
     "models.m[0].service_tiers: unknown tier(s) ['scale']: the tiers are batch, flex, priority"),
    # issue 13: the bad key is named
    ({"Batch": {"input": 1, "cached_input": 1, "output": 1}}, "unknown tier(s) ['Batch']"),
    ({"standard": {"input": 1, "cached_input": 1, "output": 1}},
     "unknown tier(s) ['standard']: the tiers are batch, flex, priority (lower case); the "
     "version's own prices are the standard tier's"),
    ([1], "service_tiers: expected a mapping of batch, flex, priority to prices"),
    ({"batch": {"input": 1, "cached_input": 1, "output": 1, "service_tiers": {}}},
     "service_tiers.batch: unknown token class(es) ['service_tiers']"),
    ({"batch": {"input": -1, "cached_input": 1, "output": 1}}, "service_tiers.batch.input"),
])  # fmt: skip
def test_a_bad_service_tier_is_named(tiers: object, named: str) -> None:
    bad = {**SERVICE_TIERED, "models": {"m": [{**SERVICE_TIERED["models"]["m"][0],  # type: ignore[index]
           "service_tiers": tiers}]}}  # fmt: skip
    with pytest.raises(CatalogError) as info:
        PriceCatalog.from_mapping(bad)
    assert named in str(info.value)
