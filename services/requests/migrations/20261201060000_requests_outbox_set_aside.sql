-- migrate:up
-- An event the broker refuses for good (too large, invalid: quartermaster.kafka
-- RECORD_ERRORS) is set aside rather than tried again forever: one such row once
-- stopped the relay, and every event after it, in every replica. Set aside, it keeps
-- its payload and says why, for an operator to read (and, fixed, to mark unsent).
ALTER TABLE requests.outbox ADD COLUMN set_aside_at timestamptz;
ALTER TABLE requests.outbox ADD COLUMN set_aside_reason text NOT NULL DEFAULT '';
DROP INDEX requests.outbox_unsent;
CREATE INDEX outbox_unsent ON requests.outbox (id) WHERE sent_at IS NULL AND set_aside_at IS NULL;

-- migrate:down
DROP INDEX requests.outbox_unsent;
CREATE INDEX outbox_unsent ON requests.outbox (id) WHERE sent_at IS NULL;
ALTER TABLE requests.outbox DROP COLUMN set_aside_reason;
ALTER TABLE requests.outbox DROP COLUMN set_aside_at;
