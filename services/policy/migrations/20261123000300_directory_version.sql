-- migrate:up

-- Moves with every directory change (people, groups, memberships, group admins), as
-- config_version moves with every change at all. A replica reloading after a change
-- of limits only keeps the directory it has: with 100,000 people, reading and
-- building it again is most of a reload.
ALTER TABLE policy.workspaces ADD COLUMN directory_version bigint NOT NULL DEFAULT 0;

-- migrate:down
ALTER TABLE policy.workspaces DROP COLUMN directory_version;
