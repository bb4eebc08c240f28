"""A rejected usage record or event as a `qm.usage.dlq.v1` record that always fits.

The DLQ copy keeps the original bytes and content-type, so a record can be replayed
once its cause is fixed (`DeadLetterView`, `Selection`, `replay_record`; the CLI's
`dlq list|replay`), with the reason, the origin (topic, partition, offset) and the
source the DLQ limit counted it under (`qm-source`, see `dlq_limit`) in headers.
A copy must never be refused by the producer or the broker (both refuse records
over ~1 MB by default): a refused DLQ record used to crash the worker, and the
record came back on every restart. So the value is cut at MAX_VALUE_BYTES, the key
at MAX_KEY_BYTES and the reason at MAX_REASON_CHARS; a cut value keeps its full size
and SHA-256 in headers (ORIGINAL_SIZE_HEADER, ORIGINAL_SHA256_HEADER) and the reason
says it was cut.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from quartermaster.topics import (
    CONTENT_TYPE,
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
    if reject.content_type:  # what the value is, to replay it as it came
        headers.append((CONTENT_TYPE, reject.content_type.encode()))
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


REPLAYED_FROM_HEADER = "qm-replayed-from"


@dataclass(frozen=True)
class DeadLetterView:
    """One record of `qm.usage.dlq.v1` as an operator sees it: where it is in the DLQ
    (`partition`, `offset`, `at`: when it was written, UTC), what it was (`key`,
    `value`, `content_type`: "" when the copy predates content-types), why
    (`reason`), where it came from (`origin`: "qm.usage.v1[2]@1234", `source`), and
    `cut`: True when the copy holds only the first MAX_VALUE_BYTES (not replayable)."""

    partition: int
    offset: int
    at: datetime
    key: bytes | None
    value: bytes
    reason: str
    origin: str
    source: str
    content_type: str
    cut: bool

    @property
    def where(self) -> str:
        """ "<partition>@<offset>" in the DLQ: how an operator names one record."""
        return f"{self.partition}@{self.offset}"


def view_of(
    partition: int, offset: int, at_ms: int, key: bytes | None, value: bytes | None,
    headers: Mapping[str, bytes],
) -> DeadLetterView:  # fmt: skip
    """The view of a DLQ record (`at_ms`: its Kafka timestamp in epoch milliseconds;
    `headers` by name, the last of a repeated one)."""

    def text(name: str) -> str:
        return headers.get(name, b"").decode("utf-8", "replace")

    origin = (
        f"{text(ORIGIN_TOPIC_HEADER)}[{text(ORIGIN_PARTITION_HEADER)}]@{text(ORIGIN_OFFSET_HEADER)}"
    )
    return DeadLetterView(
        partition, offset, datetime.fromtimestamp(at_ms / 1000, UTC), key, value or b"",
        text(ERROR_HEADER), origin, text(SOURCE_HEADER), text(CONTENT_TYPE),
        ORIGINAL_SIZE_HEADER in headers,
    )  # fmt: skip


@dataclass(frozen=True)
class Selection:
    """Which DLQ records an operator means; every given criterion must hold.
    `reason`: a substring of the reason (case-insensitive); `source`: exactly;
    `since`/`until`: written at or after / before (UTC); `where`: these
    "<partition>@<offset>" only."""

    reason: str = ""
    source: str = ""
    since: datetime | None = None
    until: datetime | None = None
    where: frozenset[str] = field(default_factory=frozenset)

    def matches(self, view: DeadLetterView) -> bool:
        """Whether `view` is selected."""
        return (
            (not self.reason or self.reason.lower() in view.reason.lower())
            and (not self.source or self.source == view.source)
            and (self.since is None or view.at >= self.since)
            and (self.until is None or view.at < self.until)
            and (not self.where or view.where in self.where)
        )


def replay_record(view: DeadLetterView) -> DeadLetter:
    """The `qm.usage.v1` record that replays `view`: its key, value and content-type
    as they came (protobuf when the copy predates content-types), marked with where in
    the DLQ it was replayed from. Raises ValueError for a cut copy."""
    if view.cut:
        raise ValueError(f"{view.where}: the DLQ holds only the first bytes of it (cut)")
    headers: Headers = [(REPLAYED_FROM_HEADER, view.where.encode())]
    if view.content_type:
        headers.insert(0, (CONTENT_TYPE, view.content_type.encode()))
    if view.source:
        headers.append((SOURCE_HEADER, view.source.encode()))
    return (Topic.USAGE.value, view.key, view.value, headers)
