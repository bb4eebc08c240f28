"""At start, hold policy's answers until the totals topic on the broker is known to be
the incarnation this workspace served from (services.policy.topic_mark), recording it
on a first start. Readiness part "topic": waiting until the broker and Postgres have
been asked; broken, with what to do, while the topic is another one, until an operator
accepts it (`python -m services.policy topic accept`), which this notices within
`every` seconds. A replica that is running when the topic is recreated is stopped by
its totals feed instead (totals_feed), and reads the new one once restarted.
"""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka.admin import AdminClient

from quartermaster import kafka
from quartermaster.db import is_outage
from services.policy.readiness import Readiness
from services.policy.stores.topics import TopicMarkStore
from services.policy.topic_mark import TopicMark, mismatch

log = logging.getLogger("qm.policy.topic")
PART = "topic"


def broker_mark(bootstrap: str, topic: str, timeout: float = 10.0) -> TopicMark | None:
    """`topic`'s id and partition count on the broker; None when it does not exist.
    Blocking (run it in a thread); OSError when the broker does not answer."""
    admin = AdminClient(kafka.client_config(bootstrap, log_level=3))
    found = kafka.topic_identity(admin, topic, timeout)
    return None if found is None else TopicMark(*found)


class TopicGuard:
    """Part "topic" of `readiness`: unready (registered as waiting when made, so make
    it before the last other part is known) until `run` finds the topic is the
    recorded one, or records it when none is. Errors reaching the broker or Postgres
    are logged and it asks again after `every` seconds."""

    def __init__(
        self, store: TopicMarkStore, bootstrap: str, readiness: Readiness, every: float
    ) -> None:
        self._store, self._bootstrap, self._every = store, bootstrap, every
        self._readiness = readiness
        topic = store.topic
        readiness.waiting(PART, lambda: f"checking that {topic} is the topic served from before")

    async def run(self) -> None:
        """Check until the topic is accepted; returns then."""
        store, readiness, said = self._store, self._readiness, ""
        topic = store.topic
        while True:
            try:
                now = await asyncio.to_thread(broker_mark, self._bootstrap, topic)
                if now is not None:  # (a missing topic: the totals feed waits and says so)
                    stored = await store.load() or await store.record_first(now)
                    problem = mismatch(topic, stored, now)
                    if problem is None:
                        readiness.clear(PART)
                        readiness.known(PART)
                        if said:
                            log.info("%s accepted (%s): answering from it", topic, now)
                        return
                    if problem != said:
                        log.error("%s", problem)
                        said = problem
                    readiness.broken(PART, problem)  # until accepted...
                    readiness.known(PART)  # ...not merely waiting
            except Exception as exc:
                if not (isinstance(exc, OSError) or is_outage(exc)):
                    raise
                log.warning("can't check %s's incarnation yet: %s", topic, exc)
            await asyncio.sleep(self._every)
