"""Request validation that reports every bad field at once.

An operation's input is checked field by field into a `Problems` collector; a caller
who sent three bad fields hears of all three in one answer, each named
(`checks[2].user_id: must not be empty`). Pure: no gRPC here, so domain modules may
use it too; `quartermaster.grpcserver.refuse` maps the problems to INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Iterator

# The longest id (user, product, model, request, group...) any service accepts.
MAX_ID_LENGTH = 256


class InvalidRequest(ValueError):
    """A request with at least one bad field; `problems` names each one
    (`field: what is wrong`), in the order they were found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Problems:
    """Every problem found in one request, as `field: what is wrong` lines.

    `prefix` is put before every field name (e.g. `checks[3].` for one item of a
    batch). Falsy while nothing is wrong.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.items: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def add(self, field: str, message: str) -> None:
        """Record that `field` is bad: `message` says how (no field name in it)."""
        self.items.append(f"{self.prefix}{field}: {message}")

    def extend(self, other: Problems) -> None:
        """Take over another collector's problems (already prefixed)."""
        self.items.extend(other.items)

    def require_id(self, field: str, value: str) -> None:
        """An id must be non-blank and at most MAX_ID_LENGTH characters."""
        if not value.strip():
            self.add(field, "must not be empty")
        elif len(value) > MAX_ID_LENGTH:
            self.add(field, f"longer than {MAX_ID_LENGTH} characters")

    def require_between(self, field: str, value: int, low: int, high: int) -> None:
        """`low <= value <= high`, both ends included."""
        if not low <= value <= high:
            self.add(field, f"must be between {low} and {high}")

    def require_not_negative(self, field: str, value: int) -> None:
        if value < 0:
            self.add(field, "must not be negative")

    def raise_if_any(self) -> None:
        """Raises InvalidRequest naming every problem found, when there is any."""
        if self.items:
            raise InvalidRequest(self.items)
