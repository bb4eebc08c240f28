"""A rejected usage record or event as a `qm.usage.dlq.v1` record that always fits.

The DLQ copy keeps the original bytes, so a fixed record can be replayed, with the
reason, the origin (topic, partition, offset) and the source the DLQ limit counted it
under (`qm-source`, see `dlq_limit`) in headers. A copy must never be
refused by the producer or the broker (both refuse records over ~1 MB by default):
a refused DLQ record used to crash the worker, and the record came back on every
restart. So the value is cut at MAX_VALUE_BYTES, the key at MAX_KEY_BYTES and the
reason at MAX_REASON_CHARS; a cut value keeps its full size and SHA-256 in headers
(ORIGINAL_SIZE_HEADER, ORIGINAL_SHA256_HEADER) and the reason says it was cut.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib

from quartermaster.topics import (
    ERROR_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    ORIGIN_TOPIC_HEADER,
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SHA256_HEADER,
    ORIGINAL_SIZE_HEADER,
    SOURCE_HEADER,
    Topic,
)
from services.metering.aggregate import Reject

# Half of the default producer and broker limit (1,000,000 / 1,048,588 bytes): what is
# left covers the key, the headers and the record overhead.
MAX_VALUE_BYTES = 512 * 1024
MAX_KEY_BYTES = 1024
MAX_REASON_CHARS = 2000

Headers = list[tuple[str, str | bytes | None]]
# (topic, key, value, headers): quartermaster.kafka.OutRecord
DeadLetter = tuple[str, bytes | None, bytes, Headers]


def short_reason(reason: str) -> str:
    """`reason` cut to MAX_REASON_CHARS characters (what is logged and sent)."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return f"{reason[:MAX_REASON_CHARS]}... ({len(reason):,} characters in all)"


def dead_letter(reject: Reject, partition: int) -> DeadLetter:
    """The DLQ record of `reject` (from `partition` of qm.usage.v1): at most
    MAX_VALUE_BYTES of value, MAX_KEY_BYTES of key and MAX_REASON_CHARS of reason
    (plus a note on what was cut)."""
    reason = short_reason(reject.reason)
    value, key = reject.value, reject.key
    headers: Headers = [
        (ORIGIN_TOPIC_HEADER, Topic.USAGE.value.encode()),
        (ORIGIN_PARTITION_HEADER, str(partition).encode()),
        (ORIGIN_OFFSET_HEADER, str(reject.offset).encode()),
    ]
    if reject.source:  # who sent it, as the DLQ limit counted it (filter the DLQ by it)
        headers.append((SOURCE_HEADER, reject.source.encode("utf-8", "backslashreplace")))
    if len(value) > MAX_VALUE_BYTES:
        headers.append((ORIGINAL_SIZE_HEADER, str(len(value)).encode()))
        headers.append((ORIGINAL_SHA256_HEADER, hashlib.sha256(value).hexdigest().encode()))
        reason += (
            f" [DLQ copy cut to the first {MAX_VALUE_BYTES:,} of {len(value):,} bytes; "
            f"the whole value's SHA-256 is in {ORIGINAL_SHA256_HEADER}]"
        )
        value = value[:MAX_VALUE_BYTES]
    if key is not None and len(key) > MAX_KEY_BYTES:
        headers.append((ORIGINAL_KEY_SIZE_HEADER, str(len(key)).encode()))
        reason += f" [key cut to the first {MAX_KEY_BYTES:,} of {len(key):,} bytes]"
        key = key[:MAX_KEY_BYTES]
    # A reason may quote the record (a JSON parser's message): never let a stray
    # surrogate make the header unencodable.
    headers.insert(0, (ERROR_HEADER, reason.encode("utf-8", "backslashreplace")))
    return (Topic.USAGE_DLQ.value, key, value, headers)
