-- migrate:up
-- Each request as the lists answer it (a CreditRequest without its timeline or its
-- standing's history), serialized by the store with every change it writes: a page is
-- then parsed from bytes by protobuf's C code instead of decoded from jsonb and built
-- field by field in Python, which was most of ListAwaitingMe's time (make
-- bench-requests, docs/benchmarks.md). override_status changes without a transition
-- (the confirmer), so the lists take it from its column. NULL for rows written before:
-- those are mapped from their columns as before.
ALTER TABLE requests.requests ADD COLUMN listed bytea;

-- migrate:down
ALTER TABLE requests.requests DROP COLUMN listed;
