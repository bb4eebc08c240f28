"""Kafka adapters shared by the services (confluent-kafka). The partition function
lives in the pure `quartermaster.partitioning`.

Every Kafka client of a process is made with `client_config`, which adds the
security the process was configured with (`configure`, once, from QM_KAFKA_*: TLS,
SASL); a test checks that no client is made another way."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported for mypy
from confluent_kafka.admin._resource import ResourceType
from confluent_kafka.cimpl import NewTopic

from quartermaster import tls
from quartermaster.config import CommonSettings
from quartermaster.settings import load_or_exit
from quartermaster.topics import SPECS

log = logging.getLogger(__name__)

# Errors about one record itself (its size, its form), from the producer or the
# broker: sending it again can only fail again (`quartermaster.publisher.Publisher.deliver`).
RECORD_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD, KafkaError.INVALID_TIMESTAMP, KafkaError._BAD_MSG,
    KafkaError._INVALID_ARG,
})  # fmt: skip

# Errors about the producer itself, not a record: the broker no longer takes its
# producer id or epoch (fenced, forgotten, a sequence it lost), or librdkafka's
# `_FATAL` (an idempotent producer whose no-duplicate guarantee broke; `fatal()` is
# true for it). librdkafka does not recover from them: that producer instance gets
# the same error for every record from then on. Seen: the local broker stalled
# (SIGSTOP) past `message.timeout.ms`, librdkafka bumped the epoch, and every record
# after was refused PRODUCER_FENCED (not flagged fatal) until the process restarted.
# A fresh producer asks the broker for a new id and sends again (`producer_failed`).
PRODUCER_ERRORS = frozenset({
    KafkaError._FATAL, KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.INVALID_PRODUCER_ID_MAPPING,
})  # fmt: skip


def producer_failed(err: KafkaError) -> bool:
    """Whether `err` (a delivery report's, an `error_cb`'s or a KafkaException's) says
    the producer that raised it can send nothing more: a fatal error or one of
    PRODUCER_ERRORS. Its owner must replace it with a new producer (sending the
    undelivered records again: what already reached the broker is deduped by event
    id downstream)."""
    return bool(err.fatal()) or err.code() in PRODUCER_ERRORS


def weak_callback(method: Callable[..., None], *args: Any) -> Callable[[KafkaError], None]:
    """librdkafka's error callback calling `method(*args, err)` while `method`'s object
    lives, without keeping it alive. A callback holding its owner, which holds the
    producer, kept the producers of stopped services (their librdkafka threads and
    broker connections) alive until the process ended: 40 OS threads were left at the
    end of two requests test files, 4 with this. Why the collector did not free those
    cycles is not known (a lone `Renewing`'s cycle is freed)."""
    ref = weakref.WeakMethod(method)

    def call(err: KafkaError) -> None:
        bound = ref()
        if bound is not None:
            bound(*args, err)

    return call


class Renewing:
    """A producer replaced once it can send nothing more (`producer_failed`): what
    `Publisher`, `UsageReporter` and the HTTP ingest's producer share (each had
    written the same generation, reason and count). `make(error_cb)` builds a
    producer with that librdkafka error callback; `name` says which in the logs.
    Errors of a replaced producer (an older `generation`) are stale and change
    nothing. Not thread-safe by itself: `renew` runs where its owner serialises
    sends (the event loop), or swaps the producers under the owner's `lock` (the
    ingest, whose poll thread renews while requests send); `failed` only assigns a
    string (under that lock, when there is one), safe from librdkafka's callback
    threads."""

    def __init__(
        self,
        make: Callable[[Callable[[KafkaError], None]], Producer],
        name: str,
        lock: contextlib.AbstractContextManager[object] | None = None,
    ) -> None:
        self._make, self._name = make, name
        # held around the swap in `renew` (not while the new producer is made) and the
        # check-and-mark in `failed`: an owner whose sends run on another thread keeps
        # them off a retiring producer
        self._lock = lock or contextlib.nullcontext()
        self.generation = 0  # which producer `producer` is
        self.broken: str | None = None  # why `producer` can send nothing more
        self.renewals = 0  # producers replaced
        self.producer = self._new(0)

    def _new(self, generation: int) -> Producer:
        return self._make(weak_callback(self.failed, generation))

    def failed(self, generation: int, err: KafkaError | None) -> None:
        """An error of producer `generation` (its error callback, a delivery report, a
        refused `produce`): marks the current producer for `renew` when `err` says it
        can send nothing more; other errors librdkafka retries itself."""
        if err is None or not producer_failed(err):
            return
        # Said before the check: no call between the check and the mark, where CPython
        # may switch threads and another renew (a report of this producer was served
        # there too), leaving this report stale and the new producer marked by it. With
        # an owner's lock the check and the mark are one step against `renew`'s swap.
        why = f"{err.name()}: {err.str()}"
        with self._lock:
            marks = generation == self.generation and self.broken is None
            if marks:
                self.broken = why
        if marks:
            log.error("the %s can send nothing more (%s): replacing it", self._name, why)

    def poll(self, timeout: float) -> int:
        """`producer.poll(timeout)`: reports served, waiting up to `timeout` s. A fatal
        error (UNKNOWN_PRODUCER_ID after a broker restart) is raised from `poll`, the
        error callback never told: it marks the producer failed here (raised, it ended
        the ingest's poll thread and every renewal). Another KafkaException is logged."""
        generation, producer = self.generation, self.producer
        try:  # the generation read first: a renewal meanwhile makes the error stale
            return int(producer.poll(timeout))
        except KafkaException as exc:
            self._raised(generation, exc)
            return 0

    def flush(self, timeout: float) -> int:
        """`producer.flush(timeout)`: records left after `timeout` s; errors as `poll`'s."""
        generation, producer = self.generation, self.producer
        try:
            return int(producer.flush(timeout))
        except KafkaException as exc:
            self._raised(generation, exc)
            return len(producer)

    def _raised(self, generation: int, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is None or not producer_failed(err):
            log.error("the %s raised while serving its reports: %s", self._name, exc)
        self.failed(generation, err)  # nothing unless `err` says the producer failed

    def renew(self) -> Producer | None:
        """A new producer in place of a failed one: the old one, for its owner to
        `retire` (its records' reports fail the sends they belong to); None when the
        current one has not failed. KafkaException when librdkafka refuses to make the
        new one (a configuration it refuses now): nothing changes, the current one
        stays marked failed, and the next `renew` tries again."""
        why = self.broken
        if why is None:
            return None
        new = self._new(self.generation + 1)
        with self._lock:
            old = self.producer
            self.producer, self.broken = new, None
            self.generation += 1
            self.renewals += 1
        log.warning("the %s was replaced (after %s)", self._name, why)
        return old


def retire(old: Producer, timeout: float = 5.0) -> int:
    """Purge a replaced producer's records and serve their reports (blocking, at most
    about `timeout` s): each fails, with _PURGE_QUEUE / _PURGE_INFLIGHT, the send it
    belongs to (a purged in-flight record may still have reached the broker). How
    many reports were left unserved. Its librdkafka threads end once the last
    reference to it goes."""
    old.purge(in_queue=True, in_flight=True, blocking=True)
    return int(old.flush(timeout))


# librdkafka properties for TLS / SASL, set once per process by `configure`
_security: dict[str, str] = {}


def configure(settings: CommonSettings) -> None:
    """Make every Kafka client this process creates from now on connect as `settings`
    say (QM_KAFKA_SECURITY_PROTOCOL and friends). Each service's entry point calls it
    once, before it creates a client."""
    _security.clear()
    _security.update(settings.kafka_client_config())
    # Checked (and refused) when the settings were read; said here, once logging is
    # set up, when one expires within tls.EXPIRY_WARNING.
    if settings.kafka_ssl_ca_file is not None:
        tls.check_ca_certificates(settings.kafka_ssl_ca_file)
    if settings.kafka_ssl_cert_file is not None:
        tls.check_certificates(settings.kafka_ssl_cert_file)
    if _security:
        log.info("Kafka clients connect with %s", settings.kafka_security_protocol)


def client_config(bootstrap: str, **config: Any) -> dict[str, Any]:
    """The configuration of a confluent-kafka client of `bootstrap`: no topic
    auto-creation, the process's security (`configure`), then `config`.

    librdkafka's producers ask the broker to create a topic they send to that does
    not exist (`allow.auto.create.topics` defaults to true for them): a DLQ record or
    a notification intent sent before `ensure_topics` would create its topic with the
    broker's defaults (its partition count, not compacted). Off, such a send fails
    (an outage to the sender, retried or logged) until the topics are created."""
    # librdkafka logs from level 4 (warning) up: its level-6 lines ("BGQUEUE| Purging 1
    # unserved events from background queue" as a client closes) reached `make run`'s
    # console among its lines, and say nothing an operator acts on.
    return {
        "bootstrap.servers": bootstrap,
        "allow.auto.create.topics": False,
        "log_level": 4,
        **_security,
        **config,
    }


class TopicMismatch(Exception):
    """Existing topics differ from `quartermaster.topics.SPECS`: `problems` (one
    sentence each) and what to do, in `str()`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            " ".join(problems) + " A topic the broker auto-created (a producer or consumer "
            "came first, or the broker lost its data and recreated it) has the broker's "
            "defaults: delete it and run ensure_topics again, or change its configuration "
            "to match (kafka-configs / kafka-topics); then see docs/operations.md, "
            "'When the broker lost its data'."
        )


def ensure_topics(
    bootstrap: str, partitions: int, timeout: float = 30.0, replication_factor: int = 1
) -> None:
    """Create every topic in `quartermaster.topics.SPECS` that does not exist yet, with
    `partitions` partitions, `replication_factor` copies and its spec's configuration;
    then check every one: TopicMismatch naming each topic whose partition count or
    configuration (say `qm.usage.totals.v1` not compacted) differs. KafkaException when
    the broker refuses (a replication factor above its broker count, say) or does not
    answer within `timeout` seconds.

    Topics are created explicitly so their partition counts are ours, not whatever the
    broker auto-creates. An existing topic is never changed: it is reported.
    """
    admin = AdminClient(client_config(bootstrap))
    deadline = time.monotonic() + timeout
    new = [
        NewTopic(
            spec.topic.value,
            num_partitions=partitions,
            replication_factor=replication_factor,
            config=spec.config,
        )
        for spec in SPECS
    ]
    while True:
        try:
            futures = admin.create_topics(new, request_timeout=10)
            for name, fut in futures.items():
                try:
                    fut.result()
                    log.info("created topic %s (%d partitions)", name, partitions)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            break
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    problems = _differences(admin, partitions, timeout)
    if problems:
        raise TopicMismatch(problems)


def _differences(admin: AdminClient, partitions: int, timeout: float) -> list[str]:
    """How the existing topics differ from SPECS (`partitions` each)."""
    names = [spec.topic.value for spec in SPECS]
    described = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    configs = admin.describe_configs(resources, request_timeout=timeout)
    by_name = {r.name: fut for r, fut in configs.items()}
    out = []
    for spec in SPECS:
        name = spec.topic.value
        found = len(described[name].result().partitions)
        if found != partitions:
            out.append(f"{name} has {found} partitions, not {partitions}.")
        entries = by_name[name].result()
        for key, wanted in spec.config.items():
            entry = entries.get(key)
            value = None if entry is None else entry.value
            if value != wanted:
                out.append(f"{name} has {key}={value}, not {wanted}.")
    return out


# How a broker that gives no topic ids (Kafka before 2.8) says so.
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def topic_identity(admin: AdminClient, topic: str, timeout: float) -> tuple[str, int] | None:
    """`topic`'s id ("" when the broker gives none) and partition count, as `admin`'s
    broker describes it now; None when the topic does not exist. Blocking; OSError
    when the broker does not answer within `timeout` seconds. What metering's and
    policy's topic checks compare with the incarnation they recorded."""
    futures = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)
    try:
        described = futures[topic].result()
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise OSError(f"describing {topic}: {exc.args[0].str()}") from exc
    topic_id = str(described.topic_id) if described.topic_id is not None else ""
    return ("" if topic_id == _NO_TOPIC_ID else topic_id), len(described.partitions)


def producer(bootstrap: str, **config: object) -> Producer:
    """A confluent-kafka producer that partitions keys like every other Kafka client.

    librdkafka's default partitioner (CRC32) sends a key to a different partition than
    the Java client, aiokafka and faust (murmur2). Usage is keyed by user_id and
    metering counts each user on one partition, the murmur2 one, so every producer of
    ours uses murmur2: its records arrive home (others are forwarded there, one hop
    later).
    """
    return Producer(client_config(bootstrap, **{"partitioner": "murmur2_random", **config}))


Headers = list[tuple[str, str | bytes | None]]
# (topic, key, value, headers), or with a fifth element: the partition to send it to
# (else the producer's murmur2 partitioner picks it from the key)
KeyedRecord = tuple[str, bytes | None, bytes, Headers]
OutRecord = KeyedRecord | tuple[str, bytes | None, bytes, Headers, int]


def main(argv: list[str] | None = None) -> None:
    """`python -m quartermaster.kafka ensure-topics --partitions N --replication-factor R`:
    create the missing topics on QM_KAFKA_BOOTSTRAP (the Helm chart's topics Job).
    Exits 2 naming the variable when QM_KAFKA_BOOTSTRAP is wrong, 1 with the broker's
    error when it refuses or can't be reached."""
    parser = argparse.ArgumentParser(prog="python -m quartermaster.kafka")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("ensure-topics", help="create every topic that does not exist yet")
    create.add_argument("--partitions", type=int, required=True)
    create.add_argument("--replication-factor", type=int, default=1)
    create.add_argument("--timeout", type=float, default=60.0, help="seconds")
    args = parser.parse_args(argv)
    if args.partitions < 1 or args.replication_factor < 1:
        parser.error("--partitions and --replication-factor must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_or_exit(CommonSettings, "topics")
    configure(settings)
    bootstrap = settings.kafka_bootstrap
    try:
        ensure_topics(bootstrap, args.partitions, args.timeout, args.replication_factor)
    except KafkaException as exc:
        sys.exit(f"creating topics on {bootstrap} failed: {exc}")


if __name__ == "__main__":
    main()
