"""The requests service's Postgres stores (schema `requests`): the I/O edge around the
pure domain. `requests` holds requests, timeline, votes and writes the outbox in the
same transaction; `outbox` is what the relay reads and marks sent."""
