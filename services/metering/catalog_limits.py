"""The bounds a price catalog document is held to before it is believed: the largest
price, threshold and name, the instants a version may start at, how deep YAML may nest
and how many nodes it may expand to. Pure (no I/O): `pricing` applies them as it parses.

Both came from a tester's LoadPrices calls: a price of 99999999999999999999999 per
million tokens was accepted, and then every event of its model overflowed the totals
and went to the DLQ, never counted (as the fallback price, every unknown model's);
a document of 2000 '[' spent 7 s of CPU before Python's recursion limit turned it
into INTERNAL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml

from quartermaster.validation import text_problem

MAX_PRICE = 10**12
"""The highest price a catalog may hold, in micro-credits per million tokens (a
million credits per million tokens: far above any model's, far below an overflow)."""
MAX_YAML_DEPTH = 16
"""How deep a YAML catalog may nest (one nests 5 deep: models.<id>[n].long_context.input)."""


MAX_YAML_NODES = 500_000
"""How many nodes a YAML catalog may hold once its aliases and merge keys (`<<: *a`)
are expanded. A catalog as long as LoadPrices takes (4 MB) written out in full holds
about 500,000 (a version is ~75 characters of ~9 nodes), so aliases may make a
document no larger than one could write without them; a 480-byte "billion laughs" of
nested merges expanded to billions and held the event loop for minutes."""
MAX_THRESHOLD = 1_000_000_000
"""The highest `long_context.above_input_tokens`: bounds.MAX_EVENT_TOKENS, the most
input one event may report (a higher threshold would never apply; past int64 it made
ListPrices and PriceHistory fail)."""
MAX_NAME_LENGTH = 256
"""The longest model or alias name (quartermaster.validation.MAX_ID_LENGTH: an event's
model is no longer, so a longer name would never price one)."""
FIRST_YEAR, LAST_YEAR = 2000, 2200
"""The years (UTC) a price version may start in: usage before 2000 was never metered,
and one past 2200 is a typo (9999-12-31 overflowed date arithmetic downstream)."""
EARLIEST = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
LATEST = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC)  # exclusive


def shown(value: object, limit: int = 40) -> str:
    """`value`'s repr cut to `limit` characters, saying how long it was: a message
    quotes what is wrong without repeating a 4 MB number whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def price_problem(value: object) -> str:
    """Why `value` can't be a price ("" when it can: an int, not a bool, 0 to
    MAX_PRICE). The value is quoted cut short: a 4 MB number is not repeated whole."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PRICE:
        return ""
    return (
        f"expected a whole number >= 0 and <= {MAX_PRICE} (micro-credits per million "
        f"tokens), got {shown(value)}"
    )


def threshold_problem(value: object) -> str:
    """Why `value` can't be a long-context tier's `above_input_tokens` ("" when it can:
    an int, not a bool, 1 to MAX_THRESHOLD)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_THRESHOLD:
        return ""
    return (
        f"expected a whole number >= 1 and <= {MAX_THRESHOLD:,} (input tokens), got {shown(value)}"
    )


def name_problem(value: object) -> str:
    """Why `value` can't be a model's or an alias's name ("" when it can: text, not
    blank, at most MAX_NAME_LENGTH characters, storable: no NUL, no lone surrogate)."""
    if not isinstance(value, str):
        return f"expected text, got {shown(value)}"
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters ({len(value)})"
    return text_problem(value) or ""


def start_problem(value: datetime) -> str:
    """Why a version can't start at `value` (aware) ("" when it can: in years FIRST_YEAR
    to LAST_YEAR, UTC)."""
    if EARLIEST <= value < LATEST:
        return ""
    return f"{value.isoformat()} is outside years {FIRST_YEAR} to {LAST_YEAR} (UTC)"


class LongNumber:
    """An integer YAML scalar with more digits than Python converts (or than any bound
    here allows): kept as its text, so the catalog's checks refuse it naming the model
    and field ("got 123456... (5000 characters)") instead of yaml failing without a
    place."""

    MAX_DIGITS = 40

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Loader(yaml.SafeLoader):
    """yaml's safe loader, held to what a catalog is, as it composes (before the time
    and memory a bad document costs):
    - nesting past MAX_YAML_DEPTH;
    - more than MAX_YAML_NODES nodes with aliases expanded (each alias counts the nodes
      of what it names; merge keys are aliases): anchors and `<<: *base` stay usable,
      as a catalog sharing a base price between versions uses them, but no longer
      multiply a small document into billions of nodes. Refusing anchors outright was
      the other choice: it breaks documents that use them for what they are for, and a
      bound on the expanded size is what every later step (construction, parsing,
      storing) actually costs;
    - an alias naming the node it is in (a recursive structure);
    - a key that is not text (`1:`, `null:`, `yes:`, a date): every key of a catalog is
      a name, and str(1) == "1" made `1:` and `"1":` one model, `null:` the model
      "None";
    - a key written twice in one mapping: yaml keeps the later silently, so two
      `gpt5-prod:` aliases naming two models, or a model listed twice, lost one of them
      without a word.
    Integers too long to convert and dates no datetime holds are kept as text
    (`LongNumber`, the scalar's string) for the catalog's checks to refuse, naming the
    model and field."""

    _depth = 0
    _nodes = 0

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> its nodes, aliases expanded

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_YAML_NODES:
            raise ValueError(
                f"line {mark.line + 1}: more than {MAX_YAML_NODES:,} YAML nodes once aliases "
                "and merge keys (<<) are expanded: write the catalog out, or share less"
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:  # still being composed: it contains this alias
                    raise ValueError(
                        f"line {event.start_mark.line + 1}: alias *{event.anchor} is inside "
                        "the node it names (a structure containing itself)"
                    )
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ValueError(f"nested more than {MAX_YAML_DEPTH} deep")
            before = self._nodes
            node = super().compose_node(parent, index)
            assert node is not None  # not at an alias: a node of its own
            self._count(1, node.start_mark)
            self._sizes[id(node)] = self._nodes - before
            return node
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: the mapping's own keys override it, as meant
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise ValueError(
                        f"line {line}: the key {shown(key)} is not text (YAML reads "
                        f"{key_node.value[:40]!r} as {type(key).__name__}): quote it, e.g. "
                        f'"{key_node.value[:40]}":'
                        if isinstance(key_node, yaml.ScalarNode)
                        else f"line {line}: a key must be text, not a {type(key).__name__}"
                    )
                first = lines.get(key)
                lines[key] = line
                if first is not None:
                    raise ValueError(
                        f"line {line}: {shown(key)} is written twice in one mapping (first "
                        f"on line {first}); yaml would keep only the later: remove one"
                    )
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> Any:
        digits = sum(c.isdigit() for c in node.value)
        if digits > LongNumber.MAX_DIGITS:
            return LongNumber(node.value)
        return super().construct_yaml_int(node)

    def construct_yaml_timestamp(self, node: Any) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError):  # year 0, month 13: `pricing` says where
            return str(node.value)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def load_yaml(text: str) -> Any:
    """The YAML document in `text` as Python values (yaml.safe_load's). ValueError
    saying why for one that isn't YAML, nests past MAX_YAML_DEPTH, expands past
    MAX_YAML_NODES, or has a key that is not text or is written twice. CPU-bound
    (a 4 MB document takes seconds): an async caller runs it in a thread."""
    loader = None
    try:
        # The reader checks every character as it is made: a control character
        # (ReaderError) is refused here, not only while parsing.
        loader = _Loader(text)
        return loader.get_single_data()
    except ValueError:
        raise
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"not a YAML document the catalog reads: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
