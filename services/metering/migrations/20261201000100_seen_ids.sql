-- migrate:up
-- Recently counted event ids, packed: one row per committed batch of a partition, its
-- 64-bit id hashes (services/metering/dedupe.py) as 8 big-endian bytes each. A row per
-- id (metering.seen_events) took ~100 bytes of table and indexes an id; this ~8, plus
-- a row's overhead per batch. No uniqueness to enforce: a partition's batches are
-- written by one fenced writer, which adds only ids it did not find.
CREATE TABLE metering.seen_ids (
    partition  integer NOT NULL,
    seen_at    timestamptz NOT NULL,
    hashes     bytea NOT NULL CHECK (length(hashes) % 8 = 0)
);
-- Random hashes do not compress: store them out of line without trying.
ALTER TABLE metering.seen_ids ALTER COLUMN hashes SET STORAGE EXTERNAL;
CREATE INDEX seen_ids_partition_seen_at ON metering.seen_ids (partition, seen_at);

INSERT INTO metering.seen_ids (partition, seen_at, hashes)
SELECT partition, seen_at, string_agg(int8send(id_hash), ''::bytea)
FROM metering.seen_events GROUP BY partition, seen_at;
DROP TABLE metering.seen_events;

-- migrate:down
CREATE TABLE metering.seen_events (
    partition  integer NOT NULL,
    id_hash    bigint NOT NULL,
    seen_at    timestamptz NOT NULL,
    PRIMARY KEY (partition, id_hash)
);
CREATE INDEX seen_events_seen_at ON metering.seen_events (seen_at);
INSERT INTO metering.seen_events (partition, id_hash, seen_at)
SELECT partition, ('x' || encode(substring(hashes FROM i * 8 + 1 FOR 8), 'hex'))::bit(64)::bigint,
       max(seen_at)
FROM metering.seen_ids, generate_series(0, length(hashes) / 8 - 1) AS i
GROUP BY 1, 2;
DROP TABLE metering.seen_ids;
