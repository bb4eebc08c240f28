-- migrate:up
-- Every DLQ record an operator replayed into qm.usage.v1 (`cli dlq replay`): who,
-- when, why. A record is replayed once; `--again` replays it anyway (its events are
-- still skipped by event_id within the dedupe window). The DLQ record is named by its
-- partition, offset and Kafka timestamp: a DLQ topic recreated empty reuses offsets,
-- never with the same timestamps.
CREATE TABLE metering.dlq_replays (
    dlq_partition  integer NOT NULL,
    dlq_offset     bigint NOT NULL,
    dlq_at         timestamptz NOT NULL,
    replayed_at    timestamptz NOT NULL DEFAULT now(),
    replayed_by    text NOT NULL,
    reason         text NOT NULL,
    PRIMARY KEY (dlq_partition, dlq_offset, dlq_at)
);

-- migrate:down
DROP TABLE metering.dlq_replays;
