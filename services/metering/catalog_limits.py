"""The bounds a price catalog document is held to before it is believed: the largest
price, and how deep YAML may nest. Pure (no I/O): `pricing` applies them as it parses.

Both came from a tester's LoadPrices calls: a price of 99999999999999999999999 per
million tokens was accepted, and then every event of its model overflowed the totals
and went to the DLQ, never counted (as the fallback price, every unknown model's);
a document of 2000 '[' spent 7 s of CPU before Python's recursion limit turned it
into INTERNAL.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_PRICE = 10**12
"""The highest price a catalog may hold, in micro-credits per million tokens (a
million credits per million tokens: far above any model's, far below an overflow)."""
MAX_YAML_DEPTH = 16
"""How deep a YAML catalog may nest (one nests 5 deep: models.<id>[n].long_context.input)."""


def price_problem(value: object) -> str:
    """Why `value` can't be a price ("" when it can: an int, not a bool, 0 to
    MAX_PRICE). The value is quoted cut short: a 4 MB number is not repeated whole."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PRICE:
        return ""
    text = repr(value)
    shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
    return (
        f"expected a whole number >= 0 and <= {MAX_PRICE} (micro-credits per million "
        f"tokens), got {shown}"
    )


class _Loader(yaml.SafeLoader):
    """yaml's safe loader, refusing nesting past MAX_YAML_DEPTH as it composes (before
    the time and the recursion a deeper document costs), and a key written twice in
    one mapping: yaml keeps the later silently, so two `gpt5-prod:` aliases naming two
    models, or a model listed twice, lost one of them without a word."""

    _depth = 0

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: the mapping's own keys override it, as meant
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = lines.get(key)
                except TypeError:
                    continue  # an unhashable key: yaml itself refuses it
                lines[key] = line
                if first is not None:
                    raise ValueError(
                        f"line {line}: {key!r} is written twice in one mapping (first on "
                        f"line {first}); yaml would keep only the later: remove one"
                    )
        return super().construct_mapping(node, deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ValueError(f"nested more than {MAX_YAML_DEPTH} deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str) -> Any:
    """The YAML document in `text` as Python values (yaml.safe_load's). ValueError
    saying why for one that isn't YAML, nests past MAX_YAML_DEPTH, or holds an
    integer past Python's digit limit."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except ValueError:
        raise
    except (yaml.YAMLError, RecursionError) as exc:
        raise ValueError(f"not a YAML document the catalog reads: {exc}") from None
    finally:
        loader.dispose()
