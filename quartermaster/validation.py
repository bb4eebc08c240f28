"""Request validation that reports every bad field at once, in a bounded answer.

An operation's input is checked field by field into a `Problems` collector; a caller
who sent three bad fields hears of all three in one answer, each named
(`checks[2].user_id: must not be empty`). Pure: no gRPC here, so domain modules may
use it too; `quartermaster.grpcserver.refuse` maps the problems to INVALID_ARGUMENT.

Bounded, because an answer's text travels in a gRPC trailer (8 KB at most by
default; a larger one reaches the caller as RESOURCE_EXHAUSTED, which a client may
take for an outage): a collector keeps the first MAX_KEPT problems and counts the
rest, and a message names the first MAX_SHOWN and says how many more there are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# The longest id (user, product, model, request, group...) any service accepts.
MAX_ID_LENGTH = 256
# The longest free text (a name, an e-mail, a reason) any service stores.
MAX_TEXT_LENGTH = 2000
# Problems kept per request (the rest are counted), and named per message.
MAX_KEPT = 100
MAX_SHOWN = 10
NUL = "\x00"
# What is said of a field holding NUL, by every service and the gRPC guard alike.
NUL_PROBLEM = "must not contain NUL (U+0000)"


class InvalidRequest(ValueError):
    """A request with at least one bad field; `problems` names each one
    (`field: what is wrong`), in the order they were found (the first MAX_KEPT;
    `omitted` counts the others). Its message names the first MAX_SHOWN."""

    def __init__(self, problems: list[str], omitted: int = 0) -> None:
        super().__init__(summarize(problems, len(problems) + omitted))
        self.problems = problems
        self.omitted = omitted


def summarize(problems: Sequence[str], total: int | None = None, shown: int = MAX_SHOWN) -> str:
    """`problems` joined with "; ", the first `shown` of them, then "and N more"
    when `total` (default: all of `problems`) is larger."""
    total = len(problems) if total is None else total
    head = "; ".join(problems[:shown])
    rest = total - min(shown, len(problems))
    return f"{head}; and {rest} more" if rest > 0 else head


def text_problem(value: str) -> str | None:
    """Why `value` can't be stored as text, or None: PostgreSQL's text refuses NUL,
    and UTF-8 has no lone surrogates (a JSON document may carry "\\ud800")."""
    if NUL in value:
        return NUL_PROBLEM
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return "must be valid Unicode (it has a lone surrogate)"
    return None


class Problems:
    """Every problem found in one request, as `field: what is wrong` lines (the
    first MAX_KEPT kept, the others counted in `omitted`).

    `prefix` is put before every field name (e.g. `checks[3].` for one item of a
    batch). Falsy while nothing is wrong.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.items: list[str] = []
        self.omitted = 0

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items) + self.omitted

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def note(self, line: str) -> None:
        """Record a problem already worded `field: what is wrong`."""
        if len(self.items) < MAX_KEPT:
            self.items.append(line)
        else:
            self.omitted += 1

    def add(self, field: str, message: str) -> None:
        """Record that `field` is bad: `message` says how (no field name in it)."""
        self.note(f"{self.prefix}{field}: {message}")

    def extend(self, other: Problems) -> None:
        """Take over another collector's problems (already prefixed)."""
        for line in other.items:
            self.note(line)
        self.omitted += other.omitted

    def message(self) -> str:
        """The problems in one bounded line (see `summarize`)."""
        return summarize(self.items, len(self))

    def require_id(self, field: str, value: str) -> None:
        """An id must be non-blank, at most MAX_ID_LENGTH characters, and storable."""
        if not value.strip():
            self.add(field, "must not be empty")
        else:
            self.require_text(field, value, MAX_ID_LENGTH)

    def require_text(self, field: str, value: str, max_length: int = MAX_TEXT_LENGTH) -> None:
        """Free text (may be empty): at most `max_length` characters, and storable."""
        if len(value) > max_length:
            self.add(field, f"longer than {max_length} characters")
        else:
            bad = text_problem(value)
            if bad:
                self.add(field, bad)

    def require_between(self, field: str, value: int, low: int, high: int) -> None:
        """`low <= value <= high`, both ends included."""
        if not low <= value <= high:
            self.add(field, f"must be between {low} and {high}")

    def require_not_negative(self, field: str, value: int) -> None:
        if value < 0:
            self.add(field, "must not be negative")

    def require_amount(self, field: str, value: int, high: int) -> None:
        """An amount: `0 <= value <= high` (a larger one is a typo or an attack, and
        would overflow the sums it joins)."""
        if value < 0:
            self.add(field, "must not be negative")
        elif value > high:
            self.add(field, f"must be at most {high}")

    def require_list(self, field: str, count: int, high: int) -> None:
        """A repeated field of at most `high` items."""
        if count > high:
            self.add(field, f"at most {high} items, got {count}")

    def raise_if_any(self) -> None:
        """Raises InvalidRequest naming every problem found, when there is any."""
        if self.items:
            raise InvalidRequest(self.items, self.omitted)
