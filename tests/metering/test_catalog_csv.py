"""What a newcomer found loading prices (issue 13), without infrastructure: a CSV's
unknown columns, a CSV load removing what CSV cannot write, tiers' long-context prices
left out of the listings, and refusals that named no line or field. The same through
the CLI against the real server are in test_prices.py."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from quartermaster.v1 import prices_pb2
from services.metering import mapping
from services.metering.cli_prices import _price_rows, catalog_yaml
from services.metering.cli_table import write
from services.metering.pricing import CatalogError, PriceCatalog, parse_csv, parse_yaml
from services.metering.revisions import CatalogFormat, PriceLoad, changes, merge
from services.metering.settings import DEFAULT_PRICES

SHIPPED = PriceCatalog.from_file(DEFAULT_PRICES)
NOW = datetime(2026, 11, 30, tzinfo=UTC)
HEADER = "model,effective_from,input,cached_input,cache_write,output,reasoning"
GPT5 = "gpt-5,2025-08-07T00:00:00Z,1250000,125000,1250000,10000000,10000000"


def listed(every_version: bool = False) -> prices_pb2.ListPricesResponse:
    """What ListPrices answers for the shipped catalog (now, or every version)."""
    out = prices_pb2.ListPricesResponse(
        revision=1, fallback=mapping.model_price("", None, SHIPPED.fallback)
    )
    for model, versions in sorted(SHIPPED.models.items()):
        shown = versions if every_version else [v for v in versions if v[0] <= NOW][-1:]
        out.prices.extend(mapping.model_price(model, t, p) for t, p in shown)
    out.aliases.update(SHIPPED.aliases)
    return out


def list_csv() -> str:
    """`prices list --format csv` of the shipped catalog."""
    out = io.StringIO()
    rows = [r for p in (*listed().prices, listed().fallback) for r in _price_rows(p, False)]
    write(rows, ["model", "effective_from", *(HEADER.split(",")[2:]),
                 "cache_write_1h", "audio_input", "audio_output"], "csv", out)  # fmt: skip
    return out.getvalue()


# -- 1: a CSV's columns --


@pytest.mark.parametrize(("header", "unknown"), [
    # the newcomer's: batch prices loaded as gpt-5's standard ones
    (f"{HEADER},service_tier", "['service_tier']"),
    # a typo: "nothing to change" (YAML refuses `unknown token class(es) ['ouput']`)
    (HEADER.replace("output", "output,ouput"), "['ouput']"),
])  # fmt: skip
def test_a_csv_column_the_catalog_does_not_know_is_refused_naming_it(
    header: str, unknown: str
) -> None:
    row = GPT5 + ",batch" if "service_tier" in header else GPT5.replace(",10000000,", ",1,1,", 1)
    with pytest.raises(CatalogError) as info:
        parse_csv(f"{header}\n{row}\n", "p.csv")
    said = str(info.value)
    assert said.startswith(f"p.csv: line 1: unknown column(s) {unknown}: the columns are "
                           "model, effective_from, input, cached_input, output (required) and "
                           "cache_write, reasoning, cache_write_1h, audio_input, audio_output "
                           "(optional"), said  # fmt: skip
    assert "service-tier and long-context prices and aliases are YAML only" in said


def test_an_optional_column_left_out_is_its_classs_default_as_docs_say() -> None:
    doc = parse_csv("model,effective_from,input,cached_input,output\n"
                    "m,2026-01-01T00:00:00Z,3000000,300000,15000000\n")  # fmt: skip
    price = doc.models["m"][0][1]
    assert (price.cache_write, price.reasoning, price.cache_write_1h) == (3_000_000, 15_000_000,
                                                                          3_000_000)  # fmt: skip
    assert (price.audio_input, price.audio_output) == (3_000_000, 15_000_000)
    with pytest.raises(CatalogError, match=r"p.csv: line 2.output: required"):
        parse_csv("model,effective_from,input,cached_input,output\nm,2026-01-01T00:00:00Z,1,1,\n",
                  "p.csv")  # fmt: skip
    with pytest.raises(
        CatalogError,
        match=r"header lacks column\(s\) \['output'\] and has "
        r"unknown column\(s\) \['ouput'\] \(misspelt\?\)",
    ):
        parse_csv(f"{HEADER.replace('output', 'ouput')}\n{GPT5}\n")
    with pytest.raises(CatalogError, match=r"line 1: column\(s\) \['input'\] written twice"):
        parse_csv(f"{HEADER},input\n{GPT5},1\n")


# -- 2: a CSV load removing what CSV cannot write --


def csv_load(text: str, replace: bool = False, drop: bool = False) -> PriceCatalog:
    load = PriceLoad(text, CatalogFormat.CSV, "list.csv", replace=replace, drop_yaml_only=drop)
    return merge(SHIPPED, load.parse(), replace)


def test_loading_back_the_csv_list_is_refused_naming_what_it_would_remove() -> None:
    with pytest.raises(CatalogError) as info:
        csv_load(list_csv())
    said = str(info.value)
    assert said.startswith("list.csv: this CSV load would remove prices and aliases CSV cannot "
                           "write (it has no service-tier, long-context or alias columns): "
                           "claude-opus-4-1 version from 2025-08-05T00:00:00+00:00: "
                           "service_tiers.batch; "), said  # fmt: skip
    assert ("claude-sonnet-4-5 version from 2025-09-29T00:00:00+00:00: long_context, "
            "service_tiers.batch, service_tiers.batch.long_context") in said  # fmt: skip
    assert "`prices list --format yaml`" in said
    assert "--drop-yaml-only" in said
    assert "alias" not in said.split("columns):")[1].split(". Load")[0]  # kept without replace
    with pytest.raises(CatalogError) as info:
        csv_load(list_csv(), replace=True)
    assert "alias gpt5-prod-eastus -> gpt-5" in str(info.value)
    # asked for: the tiers go, said line by line
    dropped = csv_load(list_csv(), replace=True, drop=True)
    assert dropped.models["gpt-5"][0][1].service_tiers == ()
    lines = changes(SHIPPED, dropped, NOW)
    assert "o3: version from 2025-04-16T00:00:00+00:00 removed" in lines
    assert "alias gpt5-prod-eastus: gpt-5 -> (none)" in lines
    # a CSV row of a model with no tiers, or of a new version, removes nothing
    merge(SHIPPED, parse_csv(f"{HEADER}\n{GPT5.replace('2025-08-07', '2026-12-01')}\n"), False)


def test_the_yaml_list_loads_back_as_nothing_to_change() -> None:
    text = catalog_yaml(listed(every_version=True))
    for replace in (False, True):
        assert changes(SHIPPED, merge(SHIPPED, parse_yaml(text, "list.yaml"), replace), NOW) == []


# -- 3: every price charged is listed --


def test_a_tiers_long_context_prices_have_a_row() -> None:
    (sonnet,) = [p for p in listed().prices if p.model == "claude-sonnet-4-5"]
    rows = _price_rows(sonnet, True)
    assert [r[0] for r in rows] == ["claude-sonnet-4-5", "claude-sonnet-4-5 [input > 200,000]",
                                    "claude-sonnet-4-5 [batch]",
                                    "claude-sonnet-4-5 [batch, input > 200,000]"]  # fmt: skip
    # input, cached_input, cache_write, output, reasoning, cache_write_1h
    assert rows[3][2:8] == ["3000000", "300000", "3750000", "11250000", "11250000", "6000000"]


# -- 5: every refusal names the line or the model, field and value --


@pytest.mark.parametrize(("version", "said"), [
    ("{input: 1, cached_input: 1, output: 1}",
     'p.yaml: models.gpt-5[0].effective_from: required: an ISO-8601 instant with a time zone, '
     'e.g. "2026-12-01T00:00:00Z"'),
    ("{effective_from: 2026-12-01, input: 1, cached_input: 1, output: 1}",
     "p.yaml: models.gpt-5[0].effective_from: 2026-12-01 is a date, not an instant: write it "
     'quoted, with a time and zone, e.g. "2026-12-01T00:00:00Z"'),
    ("{effective_from: '2026-12-01', input: 1, cached_input: 1, output: 1}",
     "p.yaml: models.gpt-5[0].effective_from: needs a time zone, got '2026-12-01': write it "
     'quoted, e.g. "2026-12-01T00:00:00Z"'),
])  # fmt: skip
def test_an_effective_from_missing_or_a_date_is_named(version: str, said: str) -> None:
    with pytest.raises(CatalogError) as info:
        parse_yaml(f"models:\n  gpt-5: [{version}]\n", "p.yaml")
    assert str(info.value) == said


def test_a_bad_alias_names_the_file_not_document() -> None:
    doc = parse_yaml("aliases:\n  team-gpt: gpt-9\n", "p.yaml")
    with pytest.raises(CatalogError) as info:
        merge(SHIPPED, doc, False)
    assert str(info.value) == "p.yaml: aliases name models the catalog lacks: team-gpt -> gpt-9"
    with pytest.raises(CatalogError, match=r"^p.yaml: alias o3 -> gpt-5: o3 is a model"):
        merge(SHIPPED, parse_yaml("aliases:\n  o3: gpt-5\n", "p.yaml"), False)


def test_csv_refusals_name_the_line() -> None:
    with pytest.raises(
        CatalogError,
        match=r"^p.csv: line 3: a second gpt-5 version from "
        r"2025-08-07T00:00:00\+00:00 \(the first on line 2\)",
    ):
        parse_csv(f"{HEADER}\n{GPT5}\n{GPT5}\n", "p.csv")
    with pytest.raises(CatalogError, match=r"^p.csv: line 2.effective_from: required"):
        parse_csv(f"{HEADER}\n{GPT5.replace('2025-08-07T00:00:00Z', '')}\n", "p.csv")
    with pytest.raises(CatalogError, match=r"^p.csv: line 2.model: '' is not a name"):
        parse_csv(f"{HEADER}\n{GPT5.replace('gpt-5', '')}\n", "p.csv")


def test_a_change_line_tells_every_class_charged() -> None:
    doc = parse_yaml("models:\n  gpt-5:\n    - {effective_from: '2026-12-01T00:00:00Z', "
                     "input: 2, cached_input: 1, output: 3}\n")  # fmt: skip
    (line,) = changes(SHIPPED, merge(SHIPPED, doc, False), NOW)
    assert line == ("gpt-5: new version from 2026-12-01T00:00:00+00:00: input 2, cached_input "
                    "1, output 3, reasoning 3, cache_write 2, cache_write_1h 2, audio_input 2, "
                    "audio_output 3")  # fmt: skip
