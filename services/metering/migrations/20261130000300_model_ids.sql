-- migrate:up
-- Every model id events were counted under, as reported ("gpt-5-2025-08-07",
-- "openai/gpt-5", an Azure deployment's name): the Cost API resolves these few ids to
-- catalog models (quartermaster.model_ids) and groups by the resolved model, without
-- scanning the rollups for their distinct ids. Written by the counting store with the
-- rollups of a batch that brings an id it has not written before.
CREATE TABLE metering.model_ids (
    model       text PRIMARY KEY,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO metering.model_ids (model)
SELECT DISTINCT model FROM metering.rollups_15m
ON CONFLICT DO NOTHING;

-- migrate:down
DROP TABLE metering.model_ids;
