-- migrate:up
CREATE SCHEMA IF NOT EXISTS notifier;

-- One row per (intent, recipient, channel): the notifier's promise to deliver it once.
-- Inserted if absent when the intent is read (a redelivered or duplicated intent finds
-- its row), claimed atomically by one sender (state 'sending' until `claimed_until`),
-- then 'delivered' or 'failed' for good, or 'retrying' at `due`.
CREATE TABLE notifier.deliveries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id   text NOT NULL CHECK (workspace_id <> ''),
    dedupe_key     text NOT NULL CHECK (dedupe_key <> ''),
    recipient      text NOT NULL,
    channel        text NOT NULL CHECK (channel <> ''),
    kind           text NOT NULL,
    address        text NOT NULL,
    display_name   text NOT NULL DEFAULT '',
    -- The rendered services.notifier.channel.Message, as JSON.
    message        jsonb NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'retrying', 'delivered', 'failed')),
    attempts       integer NOT NULL DEFAULT 0,
    due            timestamptz NOT NULL DEFAULT now(),
    claimed_by     text NOT NULL DEFAULT '',
    claimed_until  timestamptz,
    -- A claim ran out without an outcome (its sender died or hung): the receiver may
    -- have the message already, so the next sender asks it before sending again.
    unsure         boolean NOT NULL DEFAULT false,
    reason         text NOT NULL DEFAULT '',
    ref            text NOT NULL DEFAULT '',
    intent_at      timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    delivered_at   timestamptz,
    UNIQUE (workspace_id, dedupe_key, recipient, channel)
);
CREATE INDEX deliveries_due ON notifier.deliveries (due) WHERE state IN ('pending', 'retrying');
CREATE INDEX deliveries_claims ON notifier.deliveries (claimed_until) WHERE state = 'sending';
CREATE INDEX deliveries_state ON notifier.deliveries (workspace_id, state, id);

-- Per-person channel preferences; a person without a row gets the workspace default.
CREATE TABLE notifier.preferences (
    workspace_id  text NOT NULL,
    user_id       text NOT NULL CHECK (user_id <> ''),
    channels      text[] NOT NULL CHECK (cardinality(channels) > 0),
    -- Managers: news of other people's spend comes once a day in one digest.
    digest        boolean NOT NULL DEFAULT false,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);

-- What waits for a person's daily digest, one row per fact (dedupe key).
CREATE TABLE notifier.digest_queue (
    workspace_id  text NOT NULL,
    user_id       text NOT NULL,
    dedupe_key    text NOT NULL,
    kind          text NOT NULL,
    subject       text NOT NULL,
    line          text NOT NULL,
    queued_at     timestamptz NOT NULL DEFAULT now(),
    -- The digest delivery (its dedupe key) that took it; NULL while waiting.
    digest_key    text,
    PRIMARY KEY (workspace_id, user_id, dedupe_key)
);
CREATE INDEX digest_waiting ON notifier.digest_queue (workspace_id, user_id)
    WHERE digest_key IS NULL;

-- Where every copy of a request's Slack message is (reminders and escalations add
-- copies), for chat.update after a decision (who decided, when; buttons gone).
CREATE TABLE notifier.slack_messages (
    workspace_id  text NOT NULL,
    request_id    text NOT NULL,
    user_id       text NOT NULL,
    channel       text NOT NULL,
    ts            text NOT NULL,
    posted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, request_id, channel, ts)
);

-- migrate:down
DROP SCHEMA notifier CASCADE;
