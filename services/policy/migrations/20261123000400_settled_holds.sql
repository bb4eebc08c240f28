-- migrate:up

-- The periods (period keys) whose usage total already includes the hold's call, as
-- the first replica to read such a total records it. A replica started later may
-- never see that total again (the topic is compacted: a newer total of the same
-- person and period replaces it), and would count the hold and its usage both.
ALTER TABLE policy.reservations ADD COLUMN settled_periods text[] NOT NULL DEFAULT '{}';

-- migrate:down
ALTER TABLE policy.reservations DROP COLUMN settled_periods;
