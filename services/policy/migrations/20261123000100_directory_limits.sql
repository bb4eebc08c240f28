-- migrate:up

-- A workspace can exist (its directory synced, groups limited) before anybody sets
-- its default; Check refuses until then. config_version moves on every change, so
-- a replica's fallback poll reloads only when something changed.
ALTER TABLE policy.workspaces
    ALTER COLUMN default_limit_micros DROP NOT NULL,
    ADD COLUMN period text NOT NULL DEFAULT 'month' CHECK (period IN ('day', 'week', 'month')),
    ADD COLUMN config_version bigint NOT NULL DEFAULT 0;

ALTER TABLE policy.users
    ADD COLUMN slack_user_id text,
    ADD COLUMN manager_id text,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- Groups nest: department > team > project; a cost center is a group too.
CREATE TABLE policy.groups (
    workspace_id  text NOT NULL REFERENCES policy.workspaces (workspace_id),
    group_id      text NOT NULL CHECK (group_id <> ''),
    name          text NOT NULL,
    kind          text NOT NULL DEFAULT 'group'
                  CHECK (kind IN ('department', 'team', 'project', 'cost_center', 'group')),
    parent_id     text,
    cost_center   text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, group_id),
    CHECK (parent_id IS DISTINCT FROM group_id),
    FOREIGN KEY (workspace_id, parent_id) REFERENCES policy.groups (workspace_id, group_id)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE policy.memberships (
    workspace_id  text NOT NULL,
    user_id       text NOT NULL,
    group_id      text NOT NULL,
    PRIMARY KEY (workspace_id, user_id, group_id),
    FOREIGN KEY (workspace_id, user_id) REFERENCES policy.users (workspace_id, user_id)
        ON DELETE CASCADE,
    FOREIGN KEY (workspace_id, group_id) REFERENCES policy.groups (workspace_id, group_id)
        ON DELETE CASCADE
);

CREATE TABLE policy.group_admins (
    workspace_id  text NOT NULL,
    group_id      text NOT NULL,
    user_id       text NOT NULL,
    PRIMARY KEY (workspace_id, group_id, user_id),
    FOREIGN KEY (workspace_id, group_id) REFERENCES policy.groups (workspace_id, group_id)
        ON DELETE CASCADE
);

-- scope 'member': every member gets this limit; 'pool': the members share it.
CREATE TABLE policy.group_limits (
    workspace_id  text NOT NULL,
    group_id      text NOT NULL,
    scope         text NOT NULL CHECK (scope IN ('member', 'pool')),
    limit_micros  bigint NOT NULL CHECK (limit_micros >= 0),
    period        text NOT NULL CHECK (period IN ('day', 'week', 'month')),
    enforcement   text NOT NULL CHECK (enforcement IN ('hard', 'soft')),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text NOT NULL CHECK (updated_by <> ''),
    PRIMARY KEY (workspace_id, group_id, scope),
    FOREIGN KEY (workspace_id, group_id) REFERENCES policy.groups (workspace_id, group_id)
        ON DELETE CASCADE
);

-- Overrides are never deleted: removal is recorded, so the history stays readable.
CREATE TABLE policy.overrides (
    workspace_id  text NOT NULL REFERENCES policy.workspaces (workspace_id),
    override_id   text NOT NULL CHECK (override_id <> ''),
    user_id       text NOT NULL CHECK (user_id <> ''),
    additive      boolean NOT NULL,
    limit_micros  bigint NOT NULL CHECK (limit_micros >= 0),
    period        text CHECK (period IN ('day', 'week', 'month')),
    enforcement   text CHECK (enforcement IN ('hard', 'soft')),
    granted_by    text NOT NULL CHECK (granted_by <> ''),
    reason        text NOT NULL CHECK (reason <> ''),
    starts_at     timestamptz NOT NULL,
    expires_at    timestamptz,
    review_at     timestamptz,
    request_id    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    removed_at    timestamptz,
    removed_by    text,
    PRIMARY KEY (workspace_id, override_id),
    CHECK (expires_at IS NOT NULL OR review_at IS NOT NULL),
    CHECK (expires_at IS NULL OR expires_at > starts_at),
    CHECK (additive OR period IS NOT NULL)
);
-- An approved request installs at most one override, however often it is redelivered.
CREATE UNIQUE INDEX overrides_request ON policy.overrides (workspace_id, request_id)
    WHERE request_id IS NOT NULL;

CREATE TABLE policy.model_policies (
    workspace_id         text NOT NULL,
    group_id             text NOT NULL,
    allowed_models       text[] NOT NULL DEFAULT '{}',
    fallback_model       text,
    fallback_at_percent  integer NOT NULL DEFAULT 0
                         CHECK (fallback_at_percent BETWEEN 0 AND 100),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    updated_by           text NOT NULL CHECK (updated_by <> ''),
    PRIMARY KEY (workspace_id, group_id),
    FOREIGN KEY (workspace_id, group_id) REFERENCES policy.groups (workspace_id, group_id)
        ON DELETE CASCADE
);

-- The audit log is append-only, enforced here and not only by the code.
ALTER TABLE policy.audit_log ADD COLUMN workspace_id text;
CREATE FUNCTION policy.audit_log_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'policy.audit_log is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON policy.audit_log
    FOR EACH ROW EXECUTE FUNCTION policy.audit_log_is_append_only();

-- migrate:down
DROP TRIGGER audit_log_append_only ON policy.audit_log;
DROP FUNCTION policy.audit_log_is_append_only();
ALTER TABLE policy.audit_log DROP COLUMN workspace_id;
DROP TABLE policy.model_policies;
DROP TABLE policy.overrides;
DROP TABLE policy.group_limits;
DROP TABLE policy.group_admins;
DROP TABLE policy.memberships;
DROP TABLE policy.groups;
ALTER TABLE policy.users DROP COLUMN slack_user_id, DROP COLUMN manager_id,
    DROP COLUMN updated_at;
ALTER TABLE policy.workspaces DROP COLUMN period, DROP COLUMN config_version,
    ALTER COLUMN default_limit_micros SET NOT NULL;
