-- migrate:up
-- The same as rollups_hourly per calendar day in the workspace time zone (`day` is
-- that local midnight), so day, month and whole-range Cost API queries read 24x
-- fewer rows.
CREATE TABLE metering.rollups_daily (
    day                  timestamptz NOT NULL,
    user_id              text NOT NULL,
    product              text NOT NULL,
    model                text NOT NULL,
    cost_center          text NOT NULL DEFAULT '',
    workspace_id         text NOT NULL,
    partition            integer NOT NULL,
    input_tokens         bigint NOT NULL,
    cached_input_tokens  bigint NOT NULL,
    output_tokens        bigint NOT NULL,
    reasoning_tokens     bigint NOT NULL,
    micros               bigint NOT NULL,
    events               bigint NOT NULL,
    fallback_events      bigint NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, user_id, product, model, cost_center)
);
CREATE INDEX rollups_daily_user_day ON metering.rollups_daily (user_id, day);

-- migrate:down
DROP TABLE metering.rollups_daily;
