"""Every Kafka topic the system uses, in one place, with its schema and key.

Values are protobuf (`content-type: application/x-protobuf`) unless said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Topic(StrEnum):
    USAGE = "qm.usage.v1"  # key user_id, UsageEvent (or its proto3 JSON mapping)
    USAGE_DLQ = "qm.usage.dlq.v1"  # key user_id, the original bytes (cut to fit) + qm-error
    USAGE_TOTALS = "qm.usage.totals.v1"  # key subject_kind:subject_id:period, UsageTotal
    REQUESTS = "qm.requests.v1"  # key request_id, RequestEvent
    NOTIFICATIONS = "qm.notifications.v1"  # key recipient, Notification


@dataclass(frozen=True)
class TopicSpec:
    topic: Topic
    schema: str
    config: dict[str, str] = field(default_factory=dict)


SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.USAGE, "quartermaster.v1.UsageEvent"),
    TopicSpec(Topic.USAGE_DLQ, "bytes (the rejected record, unchanged unless cut to fit)"),
    TopicSpec(Topic.USAGE_TOTALS, "quartermaster.v1.UsageTotal", {"cleanup.policy": "compact"}),
    TopicSpec(Topic.REQUESTS, "quartermaster.v1.RequestEvent"),
    TopicSpec(Topic.NOTIFICATIONS, "quartermaster.v1.Notification"),
)

CONTENT_TYPE = "content-type"
PROTOBUF = "application/x-protobuf"
# content-type parameter naming a UsageBatch: "application/x-protobuf; type=..."
USAGE_BATCH_TYPE = "quartermaster.v1.UsageBatch"
JSON = "application/json"
# Optional on a usage record: the producer's own id ("gateway/eu-1"), what metering's
# DLQ limit counts a record under (services/metering/dlq_limit.py); kept on its DLQ copy.
SOURCE_HEADER = "qm-source"
# Header names on DLQ records.
ERROR_HEADER = "qm-error"
ORIGIN_TOPIC_HEADER = "qm-origin-topic"
ORIGIN_PARTITION_HEADER = "qm-origin-partition"
ORIGIN_OFFSET_HEADER = "qm-origin-offset"
# On a DLQ record whose value was cut to fit (services/metering/dead_letter.py): the
# whole value's size in bytes and its SHA-256 (hex); the whole key's size when it was cut.
ORIGINAL_SIZE_HEADER = "qm-original-size"
ORIGINAL_SHA256_HEADER = "qm-original-sha256"
ORIGINAL_KEY_SIZE_HEADER = "qm-original-key-size"
