"""The shipped catalog against genai-prices (Pydantic's price database), to the micro
(issue 13): for every model, every price version, and the ids real traffic calls it by,
our price of random usage equals genai-prices' rounded half up to a micro, except where
DIFFERENCES documents why we differ on purpose. Every token class genai-prices knows is
drawn (one-hour cache writes, audio in and out), and every service tier (batch, flex,
priority: genai-prices' price_context) where it prices one."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from services.metering.pricing import PriceCatalog, Tokens
from services.metering.settings import DEFAULT_PRICES

CATALOG = PriceCatalog.from_file(DEFAULT_PRICES)
# (model, version's effective_from date) -> why our price differs from genai-prices'.
DIFFERENCES = {
    ("o3", "2025-04-16"): "OpenAI's o3 launch price for cached input was $2.50/M "
    "(cut to $0.50/M with the rest on 2025-06-10); genai-prices 0.2.3 has $0.50/M for both",
}
# Each catalog model's dated snapshot id, as providers answer (item 1): a model added to
# the catalog needs its line here.
SNAPSHOTS = {
    "gpt-5": "gpt-5-2025-08-07", "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-4.1": "gpt-4.1-2025-04-14", "o3": "o3-2025-04-16",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-opus-4-1": "claude-opus-4-1-20250805", "gpt-audio": "gpt-audio-2025-08-28",
}  # fmt: skip
# (model, tier) -> why genai-prices has no price for that tier of ours.
TIER_DIFFERENCES = {
    ("claude-opus-4-1", "batch"): "genai-prices 0.2.3 models Message Batches only for the "
    "models in Anthropic's batch table of 2026-10-14 (Opus 4.1 is no longer in it); Anthropic "
    "bills a batch at half of every class, as our tier says",
}
# genai-prices' price_context of each of our service tiers.
CONTEXTS = {"batch": {"processing": "batch"}, "flex": {"service_tier": "flex"},
            "priority": {"service_tier": "priority"}}  # fmt: skip
# genai-prices models tiers only from its verification (2026-10-14): compare them after.
TIERS_KNOWN_FROM = datetime(2026, 10, 15, tzinfo=UTC)
VERSIONS = [
    (model, start, until)
    for model, versions in sorted(CATALOG.models.items())
    for (start, _), until in zip(
        versions, [*(s for s, _ in versions[1:]), datetime(2100, 1, 1, tzinfo=UTC)], strict=True
    )
    if (model, start.date().isoformat()) not in DIFFERENCES
]


def _provider(model: str) -> str:
    return "anthropic" if model.startswith("claude") else "openai"


def _theirs(model_id: str, at: datetime, t: Tokens) -> int:
    got = calc_price(
        Usage(input_tokens=t.input, cache_read_tokens=t.cached_input,
              cache_write_tokens=t.cache_write, cache_write_1h_tokens=t.cache_write_1h,
              input_audio_tokens=t.audio_input, output_tokens=t.output,
              output_audio_tokens=t.audio_output),
        model_ref=model_id, provider_id=_provider(model_id), genai_request_timestamp=at,
        price_context=CONTEXTS.get(t.service_tier),
    )  # fmt: skip
    micros = (Decimal(got.total_price) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(micros)


@st.composite
def usage(draw: st.DrawFn, model: str, tier: str = "") -> Tokens:
    """Random usage of every class `model` bills: cache writes (5-minute and one-hour)
    on Anthropic's, audio on gpt-audio (which has no reasoning)."""
    caches_writes, audio = _provider(model) == "anthropic", model == "gpt-audio"
    inp = draw(st.integers(0, 400_000))
    cached = draw(st.integers(0, inp))
    written = draw(st.integers(0, inp - cached)) if caches_writes else 0
    written_1h = draw(st.integers(0, written))
    audio_in = draw(st.integers(0, inp - cached - written)) if audio else 0
    out = draw(st.integers(0, 100_000))
    reasoning = 0 if audio else draw(st.integers(0, out))
    return Tokens(input=inp, cached_input=cached, output=out, reasoning=reasoning,
                  cache_write=written, cache_write_1h=written_1h, audio_input=audio_in,
                  audio_output=draw(st.integers(0, out)) if audio else 0,
                  service_tier=tier)  # fmt: skip


@pytest.mark.parametrize(("model", "start", "until"), VERSIONS,
                         ids=[f"{m}@{s.date()}" for m, s, _ in VERSIONS])  # fmt: skip
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_catalog_price_equals_genai_prices_to_the_micro(
    model: str, start: datetime, until: datetime, data: st.DataObject
) -> None:
    at = data.draw(st.sampled_from([start + timedelta(hours=1), min(until, datetime.now(UTC))
                                    - timedelta(hours=1)]))  # fmt: skip
    t = data.draw(usage(model))
    ours = CATALOG.price(model, at, t)
    assert not ours.fallback
    for model_id in (model, SNAPSHOTS[model]):
        assert CATALOG.price(model_id, at, t) == ours, model_id
        assert ours.micros == _theirs(model_id, at, t), (model_id, at, t)


def test_the_long_context_tier_applies_past_200k_input_tokens_as_genai_prices_says() -> None:
    at = datetime(2026, 11, 30, tzinfo=UTC)
    for inp, micros in ((200_000, 615_000), (200_001, 1_222_506)):
        t = Tokens(input=inp, cached_input=0, output=1000, reasoning=0)
        assert CATALOG.price("claude-sonnet-4-5", at, t).micros == micros
        assert _theirs("claude-sonnet-4-5", at, t) == micros


@pytest.mark.parametrize(("model", "day"), sorted(DIFFERENCES))
def test_each_documented_difference_is_still_a_difference(model: str, day: str) -> None:
    """An entry of DIFFERENCES that genai-prices has come to agree with is removed."""
    at = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(days=1)
    for t in (Tokens(input=10**6, cached_input=c, output=o, reasoning=0)
              for c, o in ((0, 0), (10**6, 0), (0, 10**6))):  # fmt: skip
        if CATALOG.price(model, at, t).micros != _theirs(model, at, t):
            return
    raise AssertionError(f"{model} from {day} now agrees with genai-prices: drop it")


TIERS = [
    (model, tier)
    for model, versions in sorted(CATALOG.models.items())
    for tier, _ in versions[-1][1].service_tiers
    if (model, tier) not in TIER_DIFFERENCES
]


@pytest.mark.parametrize(("model", "tier"), TIERS, ids=[f"{m}:{t}" for m, t in TIERS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_service_tier_equals_genai_prices_to_the_micro(
    model: str, tier: str, data: st.DataObject
) -> None:
    at = max(TIERS_KNOWN_FROM, CATALOG.models[model][-1][0]) + timedelta(hours=1)
    t = data.draw(usage(model, tier))
    ours = CATALOG.price(model, at, t)
    assert ours.micros == _theirs(model, at, t), (model, tier, t)
    assert ours.micros <= CATALOG.price(model, at, replace(t, service_tier="")).micros or (
        tier == "priority"
    )


def test_one_hour_cache_writes_cost_what_anthropic_bills() -> None:
    """Issue 13's case: 5,424 cache-write tokens all ephemeral_1h, 3 input, 100 output on
    claude-sonnet-4-5 cost 34,053 micros (we charged 21,849: the 5-minute rate)."""
    at = datetime(2026, 11, 30, tzinfo=UTC)
    t = Tokens(input=5427, cached_input=0, output=100, reasoning=0, cache_write=5424,
               cache_write_1h=5424)  # fmt: skip
    assert (
        CATALOG.price("claude-sonnet-4-5", at, t).micros
        == 34_053
        == _theirs("claude-sonnet-4-5", at, t)
    )
    five_minutes = replace(t, cache_write_1h=0)
    assert CATALOG.price("claude-sonnet-4-5", at, five_minutes).micros == 21_849


@pytest.mark.parametrize(("model", "tier"), sorted(TIER_DIFFERENCES))
def test_each_documented_tier_difference_is_still_a_difference(model: str, tier: str) -> None:
    at = max(TIERS_KNOWN_FROM, CATALOG.models[model][-1][0]) + timedelta(hours=1)
    t = Tokens(input=10**6, cached_input=0, output=10**6, reasoning=0, service_tier=tier)
    assert CATALOG.price(model, at, t).micros != _theirs(model, at, t), "drop it"
