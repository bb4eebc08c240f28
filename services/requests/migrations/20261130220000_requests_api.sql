-- migrate:up
-- Who acted through a trusted service: the entry reads "<actor> via <service>".
ALTER TABLE requests.timeline ADD COLUMN via text NOT NULL DEFAULT '';

-- ListAwaitingMe: the pending requests whose current step asks a person. A GIN index on
-- the current step's approvers answers `? user_id` without reading every pending row.
CREATE INDEX requests_awaiting ON requests.requests
    USING gin ((steps -> current_step -> 'approvers'))
    WHERE state = 'pending';
-- ListAll, newest first, per workspace.
CREATE INDEX requests_created ON requests.requests (workspace_id, created_at DESC, request_id);

-- Whether policy has confirmed the grant's override in place (installing → installed)
-- or gone (removing → removed); '' before approval. The reconciler asks policy.
ALTER TABLE requests.requests ADD COLUMN override_status text NOT NULL DEFAULT ''
    CHECK (override_status IN ('', 'installing', 'installed', 'removing', 'removed'));
CREATE INDEX requests_unconfirmed ON requests.requests (workspace_id, ends_at)
    WHERE override_status IN ('installing', 'removing');

-- migrate:down
DROP INDEX requests.requests_unconfirmed;
ALTER TABLE requests.requests DROP COLUMN override_status;
DROP INDEX requests.requests_created;
DROP INDEX requests.requests_awaiting;
ALTER TABLE requests.timeline DROP COLUMN via;
