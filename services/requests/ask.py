"""What a requester asks for, validated as one input that names every bad field at
once (used by the gRPC servicer, the CLI and Slack alike). Pure.

Amounts in micro-credits; the duration in seconds, counted from approval.
"""

from __future__ import annotations

from dataclasses import dataclass

from quartermaster.validation import MAX_ID_LENGTH, Problems

MAX_AMOUNT_MICROS = 10**15  # a billion credits: more is a typo
MAX_DURATION_SECONDS = 366 * 86_400
MAX_LINKS = 10
MAX_LINK_LENGTH = 2000


@dataclass(frozen=True)
class Ask:
    """A credit request as asked: amount, how long once approved, why (required),
    optional links and the product or project it is for."""

    amount_micros: int
    duration_seconds: int
    justification: str
    links: tuple[str, ...] = ()
    product: str = ""
    project: str = ""

    def problems(self) -> Problems:
        """Every bad field (empty when the ask is good)."""
        p = Problems()
        if self.amount_micros <= 0:
            p.add("amount_micros", "must be positive")
        else:
            p.require_amount("amount_micros", self.amount_micros, MAX_AMOUNT_MICROS)
        if self.duration_seconds <= 0:
            p.add("duration_seconds", "must be positive")
        elif self.duration_seconds > MAX_DURATION_SECONDS:
            p.add("duration_seconds", f"must be at most {MAX_DURATION_SECONDS} (366 days)")
        if not self.justification.strip():
            p.add("justification", "required: say what the credits are for")
        else:
            p.require_text("justification", self.justification)
        p.require_list("links", len(self.links), MAX_LINKS)
        for i, link in enumerate(self.links[:MAX_LINKS]):
            if not link.startswith(("https://", "http://")):
                p.add(f"links[{i}]", "must be an http(s) URL")
            else:
                p.require_text(f"links[{i}]", link, MAX_LINK_LENGTH)
        p.require_text("product", self.product, MAX_ID_LENGTH)
        p.require_text("project", self.project, MAX_ID_LENGTH)
        return p
