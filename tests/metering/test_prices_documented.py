"""The shipped catalog documents every token class and tier with an example, and
each example is what the catalog charges (issue 13, 'must show'). `prices list`
printing its units is tested with the real server in test_prices.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from quartermaster.wire import epoch_ns
from services.metering.pricing import PriceCatalog, picos_of
from services.metering.settings import DEFAULT_PRICES
from services.metering.token_prices import SERVICE_TIERS, TOKEN_CLASSES

TEXT = DEFAULT_PRICES.read_text()
HEADER = TEXT[: TEXT.index("\nfallback:")]
CATALOG = PriceCatalog.from_file(DEFAULT_PRICES)
AT = epoch_ns(datetime(2026, 11, 30, tzinfo=UTC))

# (what the header says, model, tier, counts for picos_of: input, cached, written,
# output, reasoning, written_1h, audio_in, audio_out)
EXAMPLES = [
    ("1,000 in at gpt-5's 1,250,000 = 1,250 micros", "gpt-5", "", (1000, 0, 0, 0, 0), 1_250),
    ("1,000 at 125,000\n#                 = 125 micros", "gpt-5", "", (1000, 1000, 0, 0, 0), 125),
    ("claude-sonnet-4-5: 3,750 micros", "claude-sonnet-4-5", "", (1000, 0, 1000, 0, 0), 3_750),
    ("= 34,053 micros", "claude-sonnet-4-5", "", (5427, 0, 5424, 100, 0, 5424), 34_053),
    ("1,000 audio in on gpt-audio: 32,000 micros", "gpt-audio", "",
     (1000, 0, 0, 0, 0, 0, 1000), 32_000),
    ("on gpt-5: 10,000 micros", "gpt-5", "", (0, 0, 0, 1000, 0), 10_000),
    ("800 reasoning on gpt-5 is still 10,000 micros", "gpt-5", "", (0, 0, 0, 1000, 800), 10_000),
    ("1,000 audio out on gpt-audio: 64,000 micros", "gpt-audio", "",
     (0, 0, 0, 1000, 0, 0, 0, 1000), 64_000),
    ("= 1,522,500 micros", "claude-sonnet-4-5", "", (250_000, 0, 0, 1000, 0), 1_522_500),
    ("threshold: 615,000", "claude-sonnet-4-5", "", (200_000, 0, 0, 1000, 0), 615_000),
    ("11,250 micros\n#                 standard", "gpt-5", "", (1000, 0, 0, 1000, 0), 11_250),
    ("batch 625 + 5,000 = 5,625 micros", "gpt-5", "batch", (1000, 0, 0, 1000, 0), 5_625),
    ("flex the same 5,625", "gpt-5", "flex", (1000, 0, 0, 1000, 0), 5_625),
    ("priority 2,500 + 20,000 = 22,500 micros", "gpt-5", "priority", (1000, 0, 0, 1000, 0), 22_500),
]  # fmt: skip


@pytest.mark.parametrize(("said", "model", "tier", "counts", "micros"), EXAMPLES)
def test_each_documented_example_is_what_the_catalog_charges(
    said: str, model: str, tier: str, counts: tuple[int, ...], micros: int
) -> None:
    assert said in HEADER
    price, fallback, _, _ = CATALOG.version_at(model, AT)
    assert not fallback
    if tier:
        price = price.at_tier(tier)
    assert picos_of(price, *counts) == micros * 1_000_000


def test_every_token_class_and_tier_has_an_example() -> None:
    """Each class and tier starts a line of the header's list, and an example of it
    is in EXAMPLES (by the class's counts or the tier's name)."""
    lines = [line.removeprefix("#").strip() for line in HEADER.splitlines()]
    for name in (*TOKEN_CLASSES, "long_context", "service_tiers"):
        assert any(line.startswith(f"{name} ") for line in lines), f"{name} is not documented"
    for tier in SERVICE_TIERS.values():
        assert any(t == tier for _, _, t, _, _ in EXAMPLES), f"no example of the {tier} tier"
    # one example per class: the class's position in picos_of's counts is non-zero
    positions = {"input": 0, "cached_input": 1, "cache_write": 2, "output": 3, "reasoning": 4,
                 "cache_write_1h": 5, "audio_input": 6, "audio_output": 7}  # fmt: skip
    assert set(positions) == set(TOKEN_CLASSES)
    for cls, i in positions.items():
        assert any(len(c) > i and c[i] for _, _, _, c, _ in EXAMPLES), f"no example of {cls}"
