"""`DlqLimit`: when to stop routing invalid records to the DLQ and pause instead."""

from __future__ import annotations

from collections import deque


class DlqLimit:
    """Stops DLQ routing when most recent records are invalid (a bad deploy upstream).

    Over the last `window` records, if more than `max_ratio` are invalid and at least
    `min_invalid` of them, `tripped()` is true: the worker then pauses instead of
    draining a whole topic into the DLQ.
    """

    def __init__(self, window: int, max_ratio: float, min_invalid: int) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self.max_ratio = max_ratio
        self.min_invalid = min_invalid

    def tripped(self, valid: int, invalid: int) -> bool:
        """Would recording this batch trip the limit? (Nothing is recorded.)"""
        n = valid + invalid
        keep = max(0, (self._recent.maxlen or 0) - n)
        recent = list(self._recent)[-keep:] if keep else []
        bad = recent.count(False) + invalid
        total = len(recent) + n
        return bad >= self.min_invalid and bad > self.max_ratio * total

    def record(self, valid: int, invalid: int) -> None:
        self._recent.extend([True] * valid + [False] * invalid)
