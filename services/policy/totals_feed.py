"""policy's totals: a thread consumes the compacted `qm.usage.totals.v1` and applies
every record to the TotalsIndex the Evaluator reads. Every replica reads the whole
topic from its beginning (quartermaster.consumers.ReplayConsumer: no group, no
commits). After each total, `on_change(user_id, period_key)` (threshold crossings) and,
for request ids newly reported as counted, `on_settled(period_key, request_ids)`
(their reservations are settled); both run on the consumer thread and must only hand
the work over.

Readiness (part "totals"): waiting until every partition was read to the end it had
when assigned; broken for good when the topic turns out not to be the one read (see
`TOPIC_RECREATED_ADVICE`): from then on this replica answers nothing from its totals.
It recovers by being restarted once the topic holds every total again: an empty
recreated topic can't be told from a restored one, so it never picks one up by itself
(and a restarted replica waits for an operator to accept it: topic_guard).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaException, Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from quartermaster import telemetry
from quartermaster.consumers import ReplayConsumer
from quartermaster.topics import Topic
from services.policy.readiness import Readiness
from services.policy.totals import TotalsIndex

log = logging.getLogger("qm.policy.totals")
tracer = trace.get_tracer("qm.policy")
PART = "totals"
TOPIC_RECREATED_ADVICE = (
    "this replica stopped answering from its totals (UNAVAILABLE, health NOT_SERVING): "
    "they may be stale, and a recreated topic would start them at zero. What to do: "
    "bring back every total on the topic (metering's `topic accept` republishes the open "
    "totals from its PostgreSQL, or restore the topic), accept it for policy "
    "(`python -m services.policy topic accept --by NAME --reason TEXT`), then restart the "
    "policy replicas; each reads the totals again at start"
)


class TotalsFeed:
    """The consumer thread that keeps one TotalsIndex up to date and says in
    `readiness` whether its totals can be answered from. `check_seconds`: how often
    the topic is checked for having been recreated (a few small broker requests); two
    checks in a row must see it before the feed gives up."""

    def __init__(
        self,
        bootstrap: str,
        index: TotalsIndex,
        on_change: Callable[[str, str], None] = lambda _user, _period: None,
        on_settled: Callable[[str, list[str]], None] = lambda _period, _ids: None,
        readiness: Readiness | None = None,
        check_seconds: float = 5.0,
    ) -> None:
        self.index = index
        self._on_change = on_change
        self._on_settled = on_settled
        self._consumer = ReplayConsumer(bootstrap, Topic.USAGE_TOTALS.value, "policy-totals")
        self._check_seconds = check_seconds
        self._assigned = False
        # What showed the topic is not the one read, once it did (then the thread ends).
        self.problem: str | None = None
        self.readiness = readiness or Readiness()
        self.readiness.waiting(PART, self._describe)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="totals-consumer", daemon=True)

    def _describe(self) -> str:
        if not self._assigned:
            return f"waiting for the broker to list {self._consumer.topic}'s partitions"
        read, total = self._consumer.progress()
        return f"{read:,} of {total:,} records read"

    def _handle(self, msg: Message) -> None:
        if telemetry.tracing():
            # A child of the metering batch that published this total (its traceparent).
            headers = telemetry.headers_dict(msg.headers())
            with tracer.start_as_current_span(
                "apply totals", context=telemetry.context_of(headers), kind=SpanKind.CONSUMER
            ):
                self._apply(msg)
        else:
            self._apply(msg)

    def _apply(self, msg: Message) -> None:
        applied = self.index.apply(msg.value())
        if applied is None:
            return
        if applied.settled:
            self._on_settled(applied.period_key, applied.settled)
        self._on_change(applied.user_id, applied.period_key)

    def _run(self) -> None:
        try:
            if self._assign():
                self._follow()
        except Exception as exc:
            # Whatever ended the thread, these totals stop moving: answering from them
            # would be answering from stale state.
            log.exception("the totals consumer stopped")
            stopped = f"the totals consumer stopped ({exc}); restart this replica"
            self.readiness.broken(PART, stopped)
        finally:
            self._consumer.close()

    def _assign(self) -> bool:
        """Assign every partition, trying again while the broker can't say which
        (readiness says it waits for that); False when stopped first."""
        delay = 0.1
        while not self._stop.is_set():
            try:
                self._consumer.assign()
                self._assigned = True
                return True
            except (KafkaException, RuntimeError) as exc:  # broker away, or no topic yet
                log.warning("can't list %s's partitions yet: %s", self._consumer.topic, exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return False

    def _follow(self) -> None:
        consumer, known, suspect = self._consumer, False, None
        next_check = time.monotonic() + self._check_seconds
        while not self._stop.is_set():
            msg = consumer.poll(0.05)
            if msg is not None:
                self._handle(msg)
            if not known and consumer.caught_up.is_set():
                known = True
                self.readiness.known(PART)
            if time.monotonic() >= next_check:
                problem = self._recreated()
                # Only when two checks in a row see it: a new partition leader's end
                # offset can lag for a moment, and giving up takes a restart.
                if problem is not None and suspect is not None:
                    self._give_up(problem)
                    return
                suspect = problem
                next_check = time.monotonic() + self._check_seconds

    def _recreated(self) -> str | None:
        try:
            return self._consumer.recreated()
        except KafkaException as exc:
            # The broker is away: nothing new can be read, nor told; ask again later.
            log.warning("could not check %s for being recreated: %s", self._consumer.topic, exc)
            return None

    def _give_up(self, problem: str) -> None:
        self.problem = problem
        log.error("%s; %s", problem, TOPIC_RECREATED_ADVICE)
        self.readiness.broken(PART, f"{problem}; restart policy once the totals are restored")

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
