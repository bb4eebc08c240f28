"""The errors policy's operations raise, whoever runs them (stores, servicers,
consumers); servicers map them to gRPC status codes (see mapping.status_of)."""

from __future__ import annotations


class NotFound(LookupError):
    """The subject of a change does not exist; the message starts with the field."""


class Conflict(ValueError):
    """The change contradicts the current state (e.g. a group cycle, a reservation
    already released); the message starts with the field."""


class TooMany(Exception):
    """A user already has as many open reservations as a replica allows (the servicer
    answers RESOURCE_EXHAUSTED); the message names the user and the count."""
