-- migrate:up
-- Exact money, and rollups every workspace time zone can be summed from (issue 13,
-- items 6-7).
--
-- Money: a row's exact cost in pico-credits (10^-6 micro-credit) is
--     micros * 1000000 + picos_remainder,
-- where micros is that exact amount rounded half up (what a reader of micros alone
-- sees: each row rounded once) and picos_remainder lies in [-500000, 500000). Rows
-- older than this migration were rounded per event: their remainder is 0.
ALTER TABLE metering.totals ADD COLUMN picos_remainder bigint NOT NULL DEFAULT 0;
ALTER TABLE metering.rollups_daily ADD COLUMN picos_remainder bigint NOT NULL DEFAULT 0;

-- Rollups per 15 minutes (UTC quarter hours) instead of hours: every zone's offset is
-- a multiple of 15 minutes (+05:30, +05:45, +09:30 included), so every local day,
-- month and hour is a union of buckets, and the Cost API agrees with the budget in
-- every zone. The hourly rows move over as the buckets starting on their hour (all
-- that is known of them).
ALTER TABLE metering.rollups_hourly RENAME TO rollups_15m;
ALTER TABLE metering.rollups_15m RENAME COLUMN hour TO bucket;
ALTER TABLE metering.rollups_15m ADD COLUMN picos_remainder bigint NOT NULL DEFAULT 0;
ALTER INDEX metering.rollups_hourly_pkey RENAME TO rollups_15m_pkey;
ALTER INDEX metering.rollups_hourly_user_hour RENAME TO rollups_15m_user_bucket;
ALTER INDEX metering.rollups_hourly_partition_hour RENAME TO rollups_15m_partition_bucket;
ALTER INDEX metering.rollups_hourly_updated_at RENAME TO rollups_15m_updated_at;

-- The hourly rollups, for readers of the old table (read-only; UTC hours).
CREATE VIEW metering.rollups_hourly AS
SELECT date_trunc('hour', bucket, 'UTC') AS hour, user_id, product, model, cost_center,
       min(workspace_id) AS workspace_id, min(partition) AS partition,
       sum(input_tokens)::bigint AS input_tokens,
       sum(cached_input_tokens)::bigint AS cached_input_tokens,
       sum(cache_write_tokens)::bigint AS cache_write_tokens,
       sum(output_tokens)::bigint AS output_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens,
       -- the hour's exact cost rounded once, half up
       div(sum(micros::numeric * 1000000 + picos_remainder) + 500000, 1000000)::bigint
           AS micros,
       sum(events)::bigint AS events, sum(fallback_events)::bigint AS fallback_events,
       max(updated_at) AS updated_at
FROM metering.rollups_15m
GROUP BY 1, 2, 3, 4, 5;

-- Which workspace-zone days each partition changed, and how often (`version` goes up
-- in the counting transaction that changes the day's 15-minute rows), against the
-- version compaction last summed into the daily rows. The Cost API reads a day from
-- the daily rows only when every partition's version of it is the compacted one, and
-- from the 15-minute rows otherwise: never a daily row older than what was counted.
-- Two tables, so that compaction never locks a row the counting path writes.
CREATE TABLE metering.rollup_days (
    partition  integer NOT NULL,
    day        timestamptz NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (day, partition)
);
CREATE TABLE metering.compacted_days (
    partition  integer NOT NULL,
    day        timestamptz NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (day, partition)
);

-- migrate:down
DROP TABLE metering.compacted_days;
DROP TABLE metering.rollup_days;
DROP VIEW metering.rollups_hourly;
ALTER INDEX metering.rollups_15m_updated_at RENAME TO rollups_hourly_updated_at;
ALTER INDEX metering.rollups_15m_partition_bucket RENAME TO rollups_hourly_partition_hour;
ALTER INDEX metering.rollups_15m_user_bucket RENAME TO rollups_hourly_user_hour;
ALTER INDEX metering.rollups_15m_pkey RENAME TO rollups_hourly_pkey;
ALTER TABLE metering.rollups_15m DROP COLUMN picos_remainder;
ALTER TABLE metering.rollups_15m RENAME COLUMN bucket TO hour;
ALTER TABLE metering.rollups_15m RENAME TO rollups_hourly;
ALTER TABLE metering.rollups_daily DROP COLUMN picos_remainder;
ALTER TABLE metering.totals DROP COLUMN picos_remainder;
