-- migrate:up
-- Usage per user, product, model and cost center per hour: what the Cost API reads.
-- Absolute values, written by upsert in the same transaction as the offsets.
CREATE TABLE metering.rollups_hourly (
    hour                 timestamptz NOT NULL,
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
    -- events priced with the fallback price (a model the catalog did not know)
    fallback_events      bigint NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour, user_id, product, model, cost_center)
);
CREATE INDEX rollups_hourly_user_hour ON metering.rollups_hourly (user_id, hour);

-- migrate:down
DROP TABLE metering.rollups_hourly;
