"""Token classes and their prices: how one event's token counts become an exact cost.

Pure: the price of each token class (`Price`), one event's counts (`Tokens`) and the
exact arithmetic (`picos_of`), for the catalog (services.metering.pricing) and
metering's hot path (services.metering.aggregate).

Token classes, each a subset priced instead of its superset's rate:
- input: every input token; cached_input (read from the prompt cache), cache_write
  (written to it for 5 minutes), cache_write_1h (the part of cache_write written for an
  hour), audio_input (audio among the uncached input) are its subsets.
- output: every output token; reasoning and audio_output are its subsets.
A version may add a long-context tier and service tiers (batch, flex, priority).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from services.metering.catalog_limits import price_problem, threshold_problem

TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens
_REQUIRED = ("input", "cached_input", "output")
# Classes a version may leave out, each defaulting to another class's price.
_DEFAULTS = {"reasoning": "output", "cache_write": "input", "cache_write_1h": "cache_write",
             "audio_input": "input", "audio_output": "output"}  # fmt: skip
TOKEN_CLASSES = (*_REQUIRED, *_DEFAULTS)
# The catalog's service tiers and UsageEvent.ServiceTier's numbers for them (a test
# compares them with the proto); STANDARD (1) and UNSPECIFIED (0) are the base prices.
SERVICE_TIERS = {2: "batch", 3: "flex", 4: "priority"}


class CatalogError(ValueError):
    """The catalog file is wrong; the message names the place."""


@dataclass(frozen=True)
class Price:
    """Micro-credits per million tokens for each token class, and an optional
    long-context tier: an event whose input tokens (cached and cache-written ones
    included) exceed `long_context_above` has every token priced at `long_context`'s
    prices. Anthropic prices Sonnet 4/4.5 so past 200,000 input tokens (its "long
    context pricing"; genai-prices' `Tier(start=200000)`).

    `cache_write` is the 5-minute cache write, `cache_write_1h` the one-hour one
    (Anthropic: 1.25x and 2x input); `audio_input`/`audio_output` price audio tokens.
    Left out (-1), they take cache_write's, input's and output's price.
    `service_tiers`: (tier, prices) for "batch", "flex", "priority"; an event on a
    tier the version does not list is priced at these (standard) prices."""

    input: int
    cached_input: int
    output: int
    reasoning: int
    cache_write: int
    long_context_above: int = 0
    long_context: Price | None = None
    cache_write_1h: int = -1
    audio_input: int = -1
    audio_output: int = -1
    service_tiers: tuple[tuple[str, Price], ...] = ()

    def __post_init__(self) -> None:
        for cls in ("cache_write_1h", "audio_input", "audio_output"):
            if getattr(self, cls) < 0:
                object.__setattr__(self, cls, getattr(self, _DEFAULTS[cls]))

    def classes(self) -> dict[str, int]:
        """{token class: price} of the base tier (in the order changes are told); the
        newer classes only where they differ from the class they default to, so a catalog
        without them is written, stored and told as before."""
        out = {"input": self.input, "cached_input": self.cached_input, "output": self.output,
               "reasoning": self.reasoning, "cache_write": self.cache_write}  # fmt: skip
        for cls in ("cache_write_1h", "audio_input", "audio_output"):
            if getattr(self, cls) != out[_DEFAULTS[cls]]:
                out[cls] = getattr(self, cls)
        return out

    def at_tier(self, tier: str) -> Price:
        """The prices on service tier `tier` ("batch", ...): this price when not listed."""
        for name, price in self.service_tiers:
            if name == tier:
                return price
        return self

    def to_mapping(self) -> dict[str, Any]:
        """The price as the catalog file writes it (what `parse_price` reads)."""
        out: dict[str, Any] = self.classes()
        if self.long_context is not None:
            tier = {"above_input_tokens": self.long_context_above, **self.long_context.classes()}
            out["long_context"] = tier
        if self.service_tiers:
            out["service_tiers"] = {n: p.to_mapping() for n, p in self.service_tiers}
        return out


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int  # all input tokens, cached and cache-written ones included
    cached_input: int  # the subset of input read from the prompt cache
    output: int  # all output tokens, reasoning included
    reasoning: int  # the reasoning subset of output
    cache_write: int = 0  # the subset of input written to the prompt cache
    cache_write_1h: int = 0  # the subset of cache_write kept for an hour
    audio_input: int = 0  # the subset of uncached input that is audio
    audio_output: int = 0  # the subset of output that is audio (not reasoning)
    service_tier: str = ""  # "", "batch", "flex" or "priority"


@dataclass(frozen=True, slots=True)
class Priced:
    micros: int
    # True when the fallback price was used (unknown model, or no price in force yet).
    fallback: bool


def cost_micros(price: Price, t: Tokens) -> int:
    """One event's cost on its own: its exact cost (`picos_of`) rounded half up once,
    on its service tier's prices. Metering does not add these up: it adds exact
    pico-credits and rounds the total.

    Cached tokens are a subset of input and reasoning a subset of output, so each
    token is priced exactly once, in its most specific class.
    """
    picos = picos_of(
        price.at_tier(t.service_tier) if t.service_tier else price,
        t.input, t.cached_input, t.cache_write, t.output, t.reasoning,
        t.cache_write_1h, t.audio_input, t.audio_output,
    )  # fmt: skip
    return (picos + TOKENS_PER_PRICE_UNIT // 2) // TOKENS_PER_PRICE_UNIT


def micros_of(
    price: Price, input: int, cached: int, written: int, output: int, reasoning: int
) -> int:
    """cost_micros of one event's token counts, rounded half up once."""
    picos = picos_of(price, input, cached, written, output, reasoning)
    return (picos + TOKENS_PER_PRICE_UNIT // 2) // TOKENS_PER_PRICE_UNIT


def picos_of(
    price: Price, input: int, cached: int, written: int, output: int, reasoning: int,
    written_1h: int = 0, audio_in: int = 0, audio_out: int = 0,
) -> int:  # fmt: skip
    """The exact cost of one event's token counts in pico-credits (10^-6 micro-credit:
    a price per million tokens times a count is a whole number of them), not rounded:
    metering's hot path (no Tokens built). `price` is the event's service tier's.
    written_1h is a subset of written, audio_in of the uncached input, audio_out of
    output; each is priced at its class's rate instead of its superset's."""
    tier = price.long_context
    if tier is not None and input > price.long_context_above:
        price = tier
    picos = (
        (input - cached - written) * price.input
        + cached * price.cached_input
        + written * price.cache_write
        + (output - reasoning) * price.output
        + reasoning * price.reasoning
    )
    if written_1h or audio_in or audio_out:  # rare: keep the common case short
        picos += (
            written_1h * (price.cache_write_1h - price.cache_write)
            + audio_in * (price.audio_input - price.input)
            + audio_out * (price.audio_output - price.output)
        )
    return picos


def _count(raw: dict[str, Any], cls: str, where: str, default: int | None = None) -> int:
    v = raw.get(cls, default)
    problem = price_problem(v)  # bounded: catalog_limits.MAX_PRICE
    if problem or not isinstance(v, int):
        raise CatalogError(f"{where}.{cls}: {problem}")
    return v


_EXTRA = {
    "version": {"effective_from", "long_context", "service_tiers"},
    "fallback": {"long_context", "service_tiers"},
    "long_context": {"above_input_tokens"},
    "service_tier": {"long_context"},
}


def parse_price(raw: Any, where: str, kind: str = "version", stored: bool = False) -> Price:
    """A version's prices; `kind` "fallback": the fallback's (no effective_from: it
    prices every time), "long_context": a long-context tier's (with `above_input_tokens`,
    no tier of its own), "service_tier": a service tier's (which may have a long-context
    tier). CatalogError naming `where` and the field.

    `stored`: a revision read back, held only to what pricing needs (every price within
    MAX_PRICE, a threshold >= 1), so a bound added later never stops a worker from
    reading what an older version stored. A document being loaded (`stored` False) is
    held to the rest too: a threshold at most catalog_limits.MAX_THRESHOLD, and a cached
    input price no higher than the input price it discounts."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping of token class to price")
    extra = _EXTRA[kind]
    if kind == "fallback" and "effective_from" in raw:
        raise CatalogError(
            f"{where}.effective_from: the fallback has one price for every time; remove "
            "effective_from (or load a model's version instead)"
        )
    unknown = set(raw) - {*TOKEN_CLASSES, *extra}
    if unknown:
        listed = sorted(str(k)[:40] for k in unknown)
        raise CatalogError(f"{where}: unknown token class(es) {listed}")
    values = {cls: _count(raw, cls, where) for cls in _REQUIRED}
    for cls, default in _DEFAULTS.items():  # in order: cache_write before cache_write_1h
        values[cls] = _count(raw, cls, where, values[default])
    if not stored and values["cached_input"] > values["input"]:
        # Every provider prices a cached read below the input it stands for; above it,
        # the columns were most likely swapped, and every cached token would overcharge.
        raise CatalogError(
            f"{where}.cached_input: {values['cached_input']} is more than input "
            f"{values['input']} (a cached read is a discount on input: columns swapped?)"
        )
    base = Price(
        values["input"], values["cached_input"], values["output"], values["reasoning"],
        values["cache_write"], cache_write_1h=values["cache_write_1h"],
        audio_input=values["audio_input"], audio_output=values["audio_output"],
    )  # fmt: skip
    if kind == "long_context":
        above = raw.get("above_input_tokens")
        problem = threshold_problem(above)
        lenient = isinstance(above, int) and not isinstance(above, bool) and above >= 1
        if problem and not (stored and lenient):
            raise CatalogError(f"{where}.above_input_tokens: {problem}")
        assert isinstance(above, int)
        return replace(base, long_context_above=above)
    if raw.get("long_context") is not None:
        long = parse_price(raw["long_context"], f"{where}.long_context", "long_context", stored)
        base = replace(base, long_context_above=long.long_context_above,
                       long_context=replace(long, long_context_above=0))  # fmt: skip
    tiers = raw.get("service_tiers")
    if tiers is not None:
        names = ", ".join(SERVICE_TIERS.values())
        if not isinstance(tiers, dict):
            raise CatalogError(f"{where}.service_tiers: expected a mapping of {names} to prices")
        unknown_tiers = sorted(str(t)[:40] for t in set(tiers) - set(SERVICE_TIERS.values()))
        if unknown_tiers:
            raise CatalogError(
                f"{where}.service_tiers: unknown tier(s) {unknown_tiers}: the tiers are {names} "
                "(lower case); the version's own prices are the standard tier's"
            )
        base = replace(base, service_tiers=tuple(
            (name, parse_price(tiers[name], f"{where}.service_tiers.{name}", "service_tier",
                               stored))
            for name in sorted(tiers)
        ))  # fmt: skip
    return base
