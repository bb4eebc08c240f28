-- migrate:up
-- Who acted through a trusted service: the entry reads "<actor> via <service>".
ALTER TABLE requests.timeline ADD COLUMN via text NOT NULL DEFAULT '';

-- ListAwaitingMe: who each pending request waits on now (its current step's approvers
-- who have not approved), written with every change of the request in its transaction.
-- A GIN index on the steps' approvers found the rows but not in order: with 1,000
-- pending for one approver it read and sorted all of them for a page of 50 (15 ms in
-- PostgreSQL alone); this index reads the page in order.
CREATE TABLE requests.awaiting (
    workspace_id  text NOT NULL,
    user_id       text NOT NULL,
    request_id    text NOT NULL,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, request_id, user_id),
    FOREIGN KEY (workspace_id, request_id) REFERENCES requests.requests
);
CREATE INDEX awaiting_by_user ON requests.awaiting (workspace_id, user_id, created_at, request_id);
INSERT INTO requests.awaiting (workspace_id, user_id, request_id, created_at)
SELECT r.workspace_id, a.user_id, r.request_id, r.created_at
FROM requests.requests r,
     jsonb_array_elements_text(r.steps -> r.current_step -> 'approvers') AS a(user_id)
WHERE r.state = 'pending' AND NOT (r.steps -> r.current_step -> 'approved_by') ? a.user_id
ON CONFLICT DO NOTHING;
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
DROP TABLE requests.awaiting;
ALTER TABLE requests.timeline DROP COLUMN via;
