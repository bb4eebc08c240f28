-- migrate:up
-- Keyset paging (services/requests/paging.py): the lists read "newest first, after
-- (created_at, request_id)", so each index ends in request_id, the tie-breaker, and
-- is scanned backwards for created_at DESC, request_id DESC. The indexes they replace
-- ended in created_at (ties unordered) or mixed directions that no scan gives in the
-- lists' order.
CREATE INDEX requests_page ON requests.requests (workspace_id, created_at, request_id);
CREATE INDEX requests_requester_page
    ON requests.requests (workspace_id, requester, created_at, request_id);
DROP INDEX requests.requests_created;
DROP INDEX requests.requests_requester;

-- migrate:down
CREATE INDEX requests_requester ON requests.requests (workspace_id, requester, created_at);
CREATE INDEX requests_created ON requests.requests (workspace_id, created_at DESC, request_id);
DROP INDEX requests.requests_requester_page;
DROP INDEX requests.requests_page;
