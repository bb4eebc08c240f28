-- migrate:up
CREATE SCHEMA IF NOT EXISTS requests;

-- One row per credit request, its current state; `version` is bumped by every change
-- and a change applies only on the version it was computed from (optimistic locking).
CREATE TABLE requests.requests (
    workspace_id      text NOT NULL CHECK (workspace_id <> ''),
    request_id        text NOT NULL CHECK (request_id <> ''),
    requester         text NOT NULL CHECK (requester <> ''),
    amount_micros     bigint NOT NULL CHECK (amount_micros > 0),
    duration_seconds  bigint NOT NULL CHECK (duration_seconds > 0),
    justification     text NOT NULL CHECK (justification <> ''),
    links             text[] NOT NULL DEFAULT '{}',
    product           text NOT NULL DEFAULT '',
    project           text NOT NULL DEFAULT '',
    standing          jsonb NOT NULL DEFAULT '{}',
    state             text NOT NULL CHECK (state IN
                        ('pending', 'approved', 'denied', 'cancelled', 'expired', 'ended', 'revoked')),
    version           bigint NOT NULL CHECK (version > 0),
    steps             jsonb NOT NULL,
    current_step      integer NOT NULL DEFAULT 0,
    granted_micros    bigint NOT NULL CHECK (granted_micros > 0 AND granted_micros <= amount_micros),
    granted_seconds   bigint NOT NULL
                        CHECK (granted_seconds > 0 AND granted_seconds <= duration_seconds),
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    approved_at       timestamptz,
    ends_at           timestamptz,
    decided_by        text NOT NULL DEFAULT '',
    decided_at        timestamptz,
    decision_reason   text NOT NULL DEFAULT '',
    -- When the reconciler next has something to do for it (NULL: never again).
    next_due_at       timestamptz,
    PRIMARY KEY (workspace_id, request_id)
);
CREATE INDEX requests_due ON requests.requests (next_due_at) WHERE next_due_at IS NOT NULL;
CREATE INDEX requests_requester ON requests.requests (workspace_id, requester, created_at);

-- Append-only: every transition and decision (who, when, why).
CREATE TABLE requests.timeline (
    id            bigserial PRIMARY KEY,
    workspace_id  text NOT NULL,
    request_id    text NOT NULL,
    version       bigint NOT NULL,
    at            timestamptz NOT NULL,
    actor         text NOT NULL CHECK (actor <> ''),
    action        text NOT NULL,
    from_state    text NOT NULL,
    to_state      text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    FOREIGN KEY (workspace_id, request_id) REFERENCES requests.requests
);
CREATE INDEX timeline_request ON requests.timeline (workspace_id, request_id, id);

CREATE FUNCTION requests.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'requests.timeline is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER timeline_append_only BEFORE UPDATE OR DELETE ON requests.timeline
    FOR EACH ROW EXECUTE FUNCTION requests.append_only();

-- One vote per person per request, whatever the step: one person counts once.
CREATE TABLE requests.votes (
    workspace_id  text NOT NULL,
    request_id    text NOT NULL,
    user_id       text NOT NULL CHECK (user_id <> ''),
    step          integer NOT NULL,
    approve       boolean NOT NULL,
    version       bigint NOT NULL,
    at            timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, request_id, user_id),
    FOREIGN KEY (workspace_id, request_id) REFERENCES requests.requests
);

-- The transactional outbox: written in the transaction of the change it announces,
-- published to Kafka by the relay afterwards, then marked sent.
CREATE TABLE requests.outbox (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    topic       text NOT NULL,
    key         bytea NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent ON requests.outbox (id) WHERE sent_at IS NULL;

-- migrate:down
DROP TABLE requests.outbox;
DROP TABLE requests.votes;
DROP TABLE requests.timeline;
DROP FUNCTION requests.append_only();
DROP TABLE requests.requests;
