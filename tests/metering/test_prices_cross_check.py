"""The shipped catalog against genai-prices (Pydantic's price database), to the micro
(issue 13): for every model, every price version, and the ids real traffic calls it by,
our price of random usage equals genai-prices' rounded half up to a micro, except where
DIFFERENCES documents why we differ on purpose."""

from __future__ import annotations

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
    "claude-opus-4-1": "claude-opus-4-1-20250805",
}  # fmt: skip
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
              cache_write_tokens=t.cache_write, output_tokens=t.output),
        model_ref=model_id, provider_id=_provider(model_id), genai_request_timestamp=at,
    )  # fmt: skip
    micros = (Decimal(got.total_price) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(micros)


@st.composite
def usage(draw: st.DrawFn, caches_writes: bool) -> Tokens:
    inp = draw(st.integers(0, 400_000))
    cached = draw(st.integers(0, inp))
    written = draw(st.integers(0, inp - cached)) if caches_writes else 0
    out = draw(st.integers(0, 100_000))
    return Tokens(input=inp, cached_input=cached, output=out,
                  reasoning=draw(st.integers(0, out)), cache_write=written)  # fmt: skip


@pytest.mark.parametrize(("model", "start", "until"), VERSIONS,
                         ids=[f"{m}@{s.date()}" for m, s, _ in VERSIONS])  # fmt: skip
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_catalog_price_equals_genai_prices_to_the_micro(
    model: str, start: datetime, until: datetime, data: st.DataObject
) -> None:
    at = data.draw(st.sampled_from([start + timedelta(hours=1), min(until, datetime.now(UTC))
                                    - timedelta(hours=1)]))  # fmt: skip
    t = data.draw(usage(caches_writes=_provider(model) == "anthropic"))
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
