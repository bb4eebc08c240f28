-- migrate:up

-- A hold on budget for one model call (Reserve / Check with reserve). It counts
-- against the user's (and their pools') remaining budget until the call's usage is
-- in metering's totals, it is released, or it expires. One hold per request_id: a
-- retried Reserve returns the hold it already made.
CREATE TABLE policy.reservations (
    reservation_id    uuid PRIMARY KEY,
    workspace_id      text NOT NULL,
    user_id           text NOT NULL CHECK (user_id <> ''),
    request_id        text NOT NULL CHECK (request_id <> ''),
    pools             text[] NOT NULL DEFAULT '{}',
    estimated_micros  bigint NOT NULL CHECK (estimated_micros >= 0),
    actual_micros     bigint CHECK (actual_micros >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    released_at       timestamptz
);
CREATE UNIQUE INDEX reservations_request ON policy.reservations (workspace_id, request_id);
CREATE INDEX reservations_open_user ON policy.reservations (workspace_id, user_id, expires_at)
    WHERE released_at IS NULL;
CREATE INDEX reservations_open_pools ON policy.reservations USING gin (pools)
    WHERE released_at IS NULL;

-- One threshold notification per subject, period and percent, whichever replica
-- sees the crossing first.
CREATE TABLE policy.threshold_notices (
    workspace_id  text NOT NULL,
    subject       text NOT NULL,
    period_key    text NOT NULL,
    percent       integer NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, subject, period_key, percent)
);

-- migrate:down
DROP TABLE policy.threshold_notices;
DROP TABLE policy.reservations;
