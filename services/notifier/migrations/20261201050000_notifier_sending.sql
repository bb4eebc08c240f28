-- migrate:up
-- The claim skips every (channel, address) with a delivery being sent (one at a time
-- per person and channel): looked up here, among the few rows in flight.
CREATE INDEX deliveries_sending ON notifier.deliveries (workspace_id, channel, address)
    WHERE state = 'sending';

-- migrate:down
DROP INDEX notifier.deliveries_sending;
