-- migrate:up
-- Webhook endpoints (QM_NOTIFIER_WEBHOOKS, by name) that answered 410 Gone: nothing is
-- posted to them until a person enables them again (the CLI's `webhooks enable`).
CREATE TABLE notifier.webhooks_disabled (
    workspace_id  text NOT NULL,
    name          text NOT NULL,
    reason        text NOT NULL,
    disabled_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);

-- migrate:down
DROP TABLE notifier.webhooks_disabled;
