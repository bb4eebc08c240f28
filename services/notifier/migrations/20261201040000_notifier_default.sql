-- migrate:up
-- The workspace default channels the running notifier applies (its
-- QM_NOTIFIER_DEFAULT_CHANNELS), written at each start, so the CLI shows what is in
-- force rather than what its own shell says.
CREATE TABLE notifier.defaults (
    workspace_id  text PRIMARY KEY,
    channels      text[] NOT NULL,
    set_by        text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- migrate:down
DROP TABLE notifier.defaults;
