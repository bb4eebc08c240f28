"""policy's Postgres stores, one per area: the I/O edge around the pure domain.

Each store is a small class over an asyncpg pool and one workspace id; it reads and
writes domain types (services.policy.rules, directory, reservations) and raises the
domain errors (services.policy.errors). Servicers and loops take a store, so tests
can hand them a fake.
"""
