-- migrate:up
-- Tokens written to the prompt cache, a subset of input_tokens priced by their own
-- rate (Anthropic's cache_creation_input_tokens): reported apart, like cached input.
ALTER TABLE metering.rollups_hourly ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE metering.rollups_daily ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0;

-- migrate:down
ALTER TABLE metering.rollups_daily DROP COLUMN cache_write_tokens;
ALTER TABLE metering.rollups_hourly DROP COLUMN cache_write_tokens;
