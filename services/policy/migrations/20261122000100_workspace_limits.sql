-- migrate:up
CREATE SCHEMA IF NOT EXISTS policy;

-- The workspace default: the limit every user gets unless a more specific rule applies.
CREATE TABLE policy.workspaces (
    workspace_id          text PRIMARY KEY CHECK (workspace_id <> ''),
    default_limit_micros  bigint NOT NULL CHECK (default_limit_micros >= 0),
    enforcement           text NOT NULL DEFAULT 'hard' CHECK (enforcement IN ('hard', 'soft')),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    updated_by            text NOT NULL CHECK (updated_by <> '')
);

-- The directory (first draft): people policy knows by id.
CREATE TABLE policy.users (
    workspace_id  text NOT NULL REFERENCES policy.workspaces (workspace_id),
    user_id       text NOT NULL CHECK (user_id <> ''),
    email         text,
    display_name  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);

-- Append-only: who changed what, before and after.
CREATE TABLE policy.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL CHECK (actor <> ''),
    action      text NOT NULL,
    subject     text NOT NULL,
    before      jsonb,
    after       jsonb
);

-- migrate:down
DROP TABLE policy.audit_log;
DROP TABLE policy.users;
DROP TABLE policy.workspaces;
