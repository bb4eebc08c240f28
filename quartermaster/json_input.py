"""Reading JSON from outside (issue 14): `loads`, json.loads where a number Python can't
convert does not fail the whole document.

json.loads raises a bare ValueError ("Exceeds the limit (4300 digits) for integer string
conversion") for an integer of more digits than `sys.get_int_max_str_digits()`: not a
JSONDecodeError, so a caller catching that one let it through as a 500, a traceback or
an "internal error", and no caller could say which field held it. Here such an integer
becomes a `LongInteger`, which every type check a reader makes (`type(v) is int`,
`isinstance(v, str)`, protobuf's ParseDict) refuses naming the field it is in; `int()`
and `float()` of one raise ValueError saying what it is.

Only a document that fails that way is read a second time, with a `parse_int` hook: the
usual one costs nothing more. NaN, Infinity and numbers like 1e999 (float inf) are left
as json.loads reads them; `finite` tells a reader that takes floats whether one is.
"""

from __future__ import annotations

import json
import math
from typing import Any


class LongInteger:
    """A JSON integer of more digits than Python converts: kept as its digit count, so
    a message naming it stays short."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"a number of {self.digits} digits"

    __str__ = __repr__

    def __int__(self) -> int:
        raise ValueError(f"{self}: too long to be a number here")

    __float__ = __int__


def _int(text: str) -> int | LongInteger:
    try:
        return int(text)
    except ValueError:
        return LongInteger(text)


def loads(text: str | bytes) -> Any:
    """json.loads(text), with an integer too long for Python a LongInteger. Raises what
    json.loads raises for anything else: JSONDecodeError (not JSON), UnicodeDecodeError
    (bytes not UTF-8), RecursionError (nested too deeply)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except ValueError:  # an integer past the int-string conversion limit
        return json.loads(text, parse_int=_int)


def finite(value: object) -> bool:
    """False for a float NaN or ±infinity (json.loads reads NaN, Infinity and 1e999)."""
    return not isinstance(value, float) or math.isfinite(value)
