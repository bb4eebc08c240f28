-- migrate:up
-- The newer token classes in the rollups and the Cost API (issue 13, item 2): one-hour
-- cache writes (a subset of cache_write_tokens, priced at the cache_write_1h rate) and
-- audio input/output (subsets of input_tokens/output_tokens, priced at the audio
-- rates). Rows counted before this migration had none recorded apart: 0.
ALTER TABLE metering.rollups_15m
    ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN audio_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN audio_output_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE metering.rollups_daily
    ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN audio_input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN audio_output_tokens bigint NOT NULL DEFAULT 0;

-- The hourly view for readers of the old table, with the new columns at its end (a
-- view may only grow at the end: CREATE OR REPLACE keeps the existing columns).
CREATE OR REPLACE VIEW metering.rollups_hourly AS
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
       max(updated_at) AS updated_at,
       sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens,
       sum(audio_input_tokens)::bigint AS audio_input_tokens,
       sum(audio_output_tokens)::bigint AS audio_output_tokens
FROM metering.rollups_15m
GROUP BY 1, 2, 3, 4, 5;

-- migrate:down
DROP VIEW metering.rollups_hourly;
CREATE VIEW metering.rollups_hourly AS
SELECT date_trunc('hour', bucket, 'UTC') AS hour, user_id, product, model, cost_center,
       min(workspace_id) AS workspace_id, min(partition) AS partition,
       sum(input_tokens)::bigint AS input_tokens,
       sum(cached_input_tokens)::bigint AS cached_input_tokens,
       sum(cache_write_tokens)::bigint AS cache_write_tokens,
       sum(output_tokens)::bigint AS output_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens,
       div(sum(micros::numeric * 1000000 + picos_remainder) + 500000, 1000000)::bigint
           AS micros,
       sum(events)::bigint AS events, sum(fallback_events)::bigint AS fallback_events,
       max(updated_at) AS updated_at
FROM metering.rollups_15m
GROUP BY 1, 2, 3, 4, 5;
ALTER TABLE metering.rollups_daily
    DROP COLUMN audio_output_tokens,
    DROP COLUMN audio_input_tokens,
    DROP COLUMN cache_write_1h_tokens;
ALTER TABLE metering.rollups_15m
    DROP COLUMN audio_output_tokens,
    DROP COLUMN audio_input_tokens,
    DROP COLUMN cache_write_1h_tokens;
