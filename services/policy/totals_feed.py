"""Feeds the TotalsIndex from `qm.usage.totals.v1`, in a thread of its own.

Every replica reads the whole topic from its beginning (quartermaster.consumers.
ReplayConsumer: no group, no commits). After each total, `on_change(user_id,
period_key)` (threshold crossings) and, for request ids newly reported as counted,
`on_settled(period_key, request_ids)` (their reservations are settled); both run
on the consumer thread and must only hand the work over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from confluent_kafka import Message

from quartermaster.consumers import ReplayConsumer
from quartermaster.topics import Topic
from services.policy.totals import TotalsIndex


class TotalsFeed:
    """The consumer thread that keeps one TotalsIndex up to date."""

    def __init__(
        self,
        bootstrap: str,
        index: TotalsIndex,
        on_change: Callable[[str, str], None] = lambda _user, _period: None,
        on_settled: Callable[[str, list[str]], None] = lambda _period, _ids: None,
    ) -> None:
        self.index = index
        self._on_change = on_change
        self._on_settled = on_settled
        self._consumer = ReplayConsumer(bootstrap, Topic.USAGE_TOTALS.value, "policy-totals")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._consumer.run_thread,
            args=(self._handle, self._stop),
            name="totals-consumer",
            daemon=True,
        )

    def _handle(self, msg: Message) -> None:
        applied = self.index.apply(msg.value())
        if applied is None:
            return
        if applied.settled:
            self._on_settled(applied.period_key, applied.settled)
        self._on_change(applied.user_id, applied.period_key)

    @property
    def caught_up(self) -> bool:
        """Whether every partition has been read to its end at least once."""
        return self._consumer.caught_up.is_set()

    def wait_caught_up(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for `caught_up`; whether it is."""
        return self._consumer.caught_up.wait(timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
