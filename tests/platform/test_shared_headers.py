"""A consumed record's headers as a read-only mapping shared by every record with the
same headers (quartermaster.telemetry `shared_headers`), read as `headers_dict` does."""

from __future__ import annotations

from typing import Any

from quartermaster.telemetry import headers_dict, shared_headers

PROTOBUF = ("content-type", b"application/x-protobuf")


def test_records_with_the_same_headers_share_one_mapping_read_as_headers_dict() -> None:
    # aiokafka hands a tuple of pairs, confluent-kafka a list: the same headers either way
    first = shared_headers((PROTOBUF, ("qm-source", b"gw-1")))
    again = shared_headers([PROTOBUF, ("qm-source", b"gw-1")])
    assert first is again
    assert first == headers_dict([PROTOBUF, ("qm-source", b"gw-1")])
    assert first == {"content-type": "application/x-protobuf", "qm-source": "gw-1"}


def test_headers_that_differ_get_their_own_mapping() -> None:
    a = shared_headers([PROTOBUF, ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")])
    b = shared_headers([PROTOBUF, ("traceparent", b"00-" + b"3" * 32 + b"-" + b"4" * 16 + b"-01")])
    assert a is not b
    assert a["traceparent"] != b["traceparent"]


def test_what_cant_be_shared_is_read_as_headers_dict() -> None:
    # a value that can't be hashed, later keys winning, names in lower case, no value,
    # bytes that are not UTF-8, a mapping, none
    pairs: list[tuple[str, Any]] = [
        ("Content-Type", bytearray(b"application/json")), ("X", b"1"), ("x", None)
    ]  # fmt: skip
    assert shared_headers(pairs) == {"content-type": "application/json", "x": ""}
    assert shared_headers([("k", b"\xff")]) == {"k": "\ufffd"}
    assert shared_headers({"K": b"v"}) == {"k": "v"}
    assert shared_headers(None) == {}
