-- migrate:up
CREATE SCHEMA IF NOT EXISTS metering;

-- Where each partition of the usage topic has been counted up to, written in the same
-- transaction as the totals it produced: the authority for exactly-once counting.
CREATE TABLE metering.offsets (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Absolute spend per user and budget period (day, week, month).
CREATE TABLE metering.totals (
    subject_kind    text NOT NULL,
    subject_id      text NOT NULL,
    period_kind     text NOT NULL CHECK (period_kind IN ('day', 'week', 'month')),
    period_key      text NOT NULL,
    workspace_id    text NOT NULL,
    partition       integer NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    used_micros     bigint NOT NULL,
    event_count     bigint NOT NULL,
    fallback_count  bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_kind, subject_id, period_kind, period_key)
);

-- event_ids counted recently (8-byte hashes), for dedupe across restarts.
CREATE TABLE metering.seen_events (
    partition  integer NOT NULL,
    id_hash    bigint NOT NULL,
    seen_at    timestamptz NOT NULL,
    PRIMARY KEY (partition, id_hash)
);
CREATE INDEX seen_events_seen_at ON metering.seen_events (seen_at);

-- migrate:down
DROP TABLE metering.seen_events;
DROP TABLE metering.totals;
DROP TABLE metering.offsets;
