"""Model policies: which models a group's members may call, and the cheaper model to
suggest past a threshold. A user under several policies gets them merged into one
`ModelRule` (pure; the snapshot caches it per set of groups)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """Which models a group's members may call, and which to suggest instead."""

    group_id: str
    allowed: frozenset[str]  # empty: every model
    fallback_model: str = ""
    fallback_at_percent: int = 0  # 0: suggest only when the model is not allowed


@dataclass(frozen=True, slots=True)
class ModelRule:
    """The model policies that bind one user, merged."""

    allowed: frozenset[str] | None  # None: every model
    fallback_model: str
    fallback_at_percent: int
    sources: tuple[str, ...]
    # "(group:ml allow gpt-5, gpt-5-mini)": the end of a refusal's reason, made once
    allowed_by: str = ""


def merge_models(policies: Iterable[ModelPolicy]) -> ModelRule | None:
    """A user under several model policies may use what any of them allows."""
    policies = list(policies)
    if not policies:
        return None
    allowed: set[str] | None = set()
    for p in policies:
        if not p.allowed:
            allowed = None
            break
        assert allowed is not None
        allowed |= p.allowed
    with_fallback = [p for p in policies if p.fallback_model]
    first = with_fallback[0] if with_fallback else None
    sources = tuple(f"group:{p.group_id}" for p in policies)
    return ModelRule(
        allowed=frozenset(allowed) if allowed is not None else None,
        fallback_model=first.fallback_model if first else "",
        fallback_at_percent=first.fallback_at_percent if first else 0,
        sources=sources,
        allowed_by=(
            f"({', '.join(sources)} allow {', '.join(sorted(allowed))})"
            if allowed is not None
            else ""
        ),
    )
