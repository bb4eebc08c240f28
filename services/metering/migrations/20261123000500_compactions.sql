-- migrate:up
-- How far the daily rollups have been recomputed from the hourly ones.
CREATE TABLE metering.compactions (
    name     text PRIMARY KEY,
    through  timestamptz NOT NULL
);
CREATE INDEX rollups_hourly_updated_at ON metering.rollups_hourly (updated_at);

-- migrate:down
DROP INDEX metering.rollups_hourly_updated_at;
DROP TABLE metering.compactions;
