-- migrate:up
-- metering asks each partition's newest rollup bucket when it takes the partition over.
CREATE INDEX rollups_hourly_partition_hour ON metering.rollups_hourly (partition, hour);
CREATE INDEX rollups_daily_partition_day ON metering.rollups_daily (partition, day);

-- migrate:down
DROP INDEX metering.rollups_daily_partition_day;
DROP INDEX metering.rollups_hourly_partition_hour;
