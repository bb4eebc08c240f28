"""The HTTP ingest's endpoints (aiohttp, as the notifier's Slack interactivity):

    POST /v1/usage   a UsageEvent, a JSON array of them or NDJSON (`ingest_body`)
    GET  /healthz    200 when the broker describes the usage topic and the producer can
                     send, else 503 with why
    GET  /metrics    Prometheus

A POST is answered, in this order:

- 401 without `Authorization: Bearer <token>` or with a token QM_TOKENS does not
  hold; 403 for a credential without role `reporter` (before the body is read);
- 413 for a body past QM_METERING_INGEST_MAX_BODY_BYTES (aiohttp stops reading it),
  or of more events than QM_METERING_INGEST_QUEUE_EVENTS (it could never be taken);
- 415 for a content type other than JSON or NDJSON;
- 400 when any event is bad, naming each by index and field; none of the body is sent
  (all or none: `ingest_body`);
- 503 with `Retry-After` when too many events wait for the broker already, the
  broker did not confirm the body in time, or the Kafka producer is being replaced
  after it failed (`ingest_producer`): send it again later;
- 202 `{"accepted": N}` once the broker has every event of the body, with
  `"ignored_fields": [...]` when events held keys that are no UsageEvent field
  (ignored, as metering ignores them: a misspelled count is a count of 0).

Any answer but 202 may be followed by sending the same body again: metering counts
an `event_id` once (per user, within QM_METERING_DEDUPE_HOURS), including events of a
body that reached the broker before its answer was lost.

Metrics (served here): `qm_ingest_requests_total{status}`,
`qm_ingest_events_total{outcome,reporter}` (outcome `accepted`, `invalid`, `busy`,
`undelivered`; reporter the credential's name), `qm_ingest_waiting_events` (sent,
not yet confirmed), `qm_ingest_producer_usable` (1, or 0 while the Kafka producer is
being replaced), `qm_ingest_producer_renewals_total` (producers replaced since the
start) and `qm_ingest_request_duration_seconds{status}` (a histogram: arrival to answer,
a 202's including the broker's confirmation).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from quartermaster.roles import REPORTER
from quartermaster.tokens import Grant
from services.metering.acceptance import Accepted
from services.metering.ingest_body import (
    BadBody,
    UnsupportedType,
    events_of,
    ignored_fields,
    plain_events,
    records_of,
    values_of,
)
from services.metering.ingest_producer import Busy, IngestProducer, Undelivered

log = logging.getLogger("qm.metering.ingest")
USAGE_PATH = "/v1/usage"
HEALTH_SECONDS = 1.0  # a health answer is reused this long (probes come in bursts)
PARTITIONS_RETRY_SECONDS = 1.0  # a failed partition count answers this long


def _digest(token: str) -> bytes:
    # Looked up by digest, as quartermaster.auth does: the lookup's timing tells
    # nothing about a token.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Reporters:
    """Who may post: `grants` (token → Grant, as QM_TOKENS parses) by token digest."""

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self._by_digest = {_digest(t): g for t, g in grants.items()}
        self.count = sum(REPORTER in g.roles for g in grants.values())

    def check(self, header: str | None) -> str | web.Response:
        """The reporter's name for an `Authorization` header, or the refusal."""
        if header is None:
            return _refuse(401, "needs Authorization: Bearer <token> of a reporter credential")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _refuse(401, "Authorization: expected Bearer <token>")
        grant = self._by_digest.get(_digest(token.strip()))
        if grant is None:
            return _refuse(401, "Authorization: unknown token (is it in the ingest's QM_TOKENS?)")
        if REPORTER not in grant.roles:
            roles = "+".join(sorted(grant.roles))
            return _refuse(403, f"credential {grant.name!r} ({roles}) lacks role reporter")
        return grant.name


JSON_TYPE = "application/json"


@functools.lru_cache(maxsize=1024)
def _accepted(events: int) -> bytes:
    """A 202's body, made once per count (bodies come in a few sizes)."""
    return json.dumps({"accepted": events}).encode()


def _refuse(status: int, message: str, **headers: str) -> web.Response:
    extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return web.json_response({"error": message}, status=status, headers={**extra, **headers})


# Seconds; a 202 waits for the broker (a few ms locally, tens across zones), a 503 for
# the delivery timeout at worst.
DURATION_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


# Per request, with `prometheus_client` directly (as quartermaster.rpcmetrics): the
# OpenTelemetry SDK's calls cost the ingest's event loop a share of each one-event
# body worth having back (docs/benchmarks.md). Process-wide, as the registry they
# are served from. Labels: a status code, an outcome of four, a credential's name from
# QM_TOKENS: never from the request.
REQUESTS = Counter("qm_ingest_requests", "HTTP ingest requests by status code", ["status"])
EVENTS = Counter(
    "qm_ingest_events", "Events posted, by outcome and reporter", ["outcome", "reporter"]
)
# From the request's arrival to its answer: a 202 includes the broker's confirmation of
# every record (acks=all), so this is what a reporter waits.
DURATION = Histogram(
    "qm_ingest_request_duration_seconds",
    "Seconds from a POST's arrival to its answer, by status code",
    ["status"], buckets=DURATION_BOUNDS,
)  # fmt: skip


class IngestMetrics:
    """The instruments of the module docstring: the per-request ones above, and gauges
    of `producer` read when scraped (OpenTelemetry's, served on the same page)."""

    def __init__(self, producer: IngestProducer) -> None:
        meter = metrics.get_meter("qm.metering.ingest")
        self._producer = producer
        # labelled children, looked up once (`labels` takes a lock and builds a key)
        self._by_status: dict[int, tuple[Counter, Histogram]] = {}
        self._by_outcome: dict[tuple[str, str], Counter] = {}
        meter.create_observable_gauge(
            "qm_ingest_waiting_events",
            callbacks=[self._waiting],
            description="Events sent to the broker and not yet confirmed",
        )
        meter.create_observable_gauge(
            "qm_ingest_producer_usable",
            callbacks=[self._usable],
            description="1 while the Kafka producer can send, 0 while it is being replaced "
            "after it failed (every post is answered 503 then)",
        )
        meter.create_observable_counter(
            "qm_ingest_producer_renewals",
            callbacks=[self._renewals],
            description="Kafka producers replaced because they could send nothing more "
            "(a fatal error, or the broker refusing the producer's id or epoch)",
        )

    def answered(self, status: int, seconds: float) -> None:
        """A POST answered `status` after `seconds`."""
        found = self._by_status.get(status)
        if found is None:
            label = str(status)
            found = self._by_status[status] = (REQUESTS.labels(label), DURATION.labels(label))
        found[0].inc()
        found[1].observe(seconds)

    def events(self, n: int, outcome: str, reporter: str) -> None:
        """`n` events of `reporter`'s ended as `outcome`."""
        child = self._by_outcome.get((outcome, reporter))
        if child is None:
            child = self._by_outcome[outcome, reporter] = EVENTS.labels(outcome, reporter)
        child.inc(n)

    def _waiting(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._producer.in_flight)]

    def _usable(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(0 if self._producer.unusable() else 1)]

    def _renewals(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._producer.renewals)]


class Ingest:
    """The endpoints over `producer`; `reporters` who may post; `max_body` bytes the
    largest body; `max_age` the oldest occurred_at accepted; `retry_after` seconds
    said with a 503; `workspace` the one metering counts (an event naming another is
    refused, as metering would dead-letter it; "": any, for tests of the body alone)."""

    def __init__(
        self,
        producer: IngestProducer,
        reporters: Reporters,
        *,
        max_body: int,
        max_age: timedelta,
        retry_after: int,
        workspace: str = "",
    ) -> None:
        self.workspace = workspace
        self.producer = producer
        self.reporters = reporters
        self.max_body = max_body
        self.max_age = max_age
        self.retry_after = str(retry_after)
        self.partitions: int | None = None
        self._asking: asyncio.Future[int] | None = None  # the partition count asked
        self._partitions_failed_until = 0.0  # monotonic: no answer until then
        self.metrics = IngestMetrics(producer)
        self._health: tuple[float, bool, str] = (0.0, False, "")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(USAGE_PATH, self.post)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    async def post(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        answer = await self._post(request)
        self.metrics.answered(answer.status, time.perf_counter() - began)
        return answer

    async def _post(self, request: web.Request) -> web.Response:
        reporter = self.reporters.check(request.headers.get("Authorization"))
        if isinstance(reporter, web.Response):
            return reporter
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse(413, f"body larger than {self.max_body} bytes: send fewer events a body")
        content_type = request.headers.get("Content-Type", "")
        now = datetime.now(UTC)
        try:
            events = plain_events(
                body, content_type, Accepted.at(now, self.max_age, self.workspace)
            )
            ignored: list[str] = []
            if events is None:  # the first pass takes no body with a field it doesn't know
                values = values_of(body, content_type)
                events = events_of(values, now, self.max_age, self.workspace)
                ignored = ignored_fields(values)
        except UnsupportedType as exc:
            return _refuse(415, str(exc))
        except BadBody as exc:
            return self._bad(exc, reporter)
        if len(events) > self.producer.queue_events:  # 503 for ever: it can never fit
            self._count(len(events), "invalid", reporter)
            most = f"at most {self.producer.queue_events} a body (QM_METERING_INGEST_QUEUE_EVENTS)"
            return _refuse(413, f"{len(events)} events: {most}; send fewer events a body")
        partitions = await self._partitions()
        if partitions is None:
            self._count(len(events), "undelivered", reporter)
            return self._busy("the broker is unreachable")
        records = records_of(events, partitions, reporter)
        try:
            await self.producer.send(records, len(events))
        except Busy as exc:
            self._count(len(events), "busy", reporter)
            return self._busy(str(exc))
        except Undelivered as exc:
            self._count(len(events), "undelivered", reporter)
            log.warning("a body of %d events from %s: %s", len(events), reporter, exc)
            return self._busy(str(exc))
        self._count(len(events), "accepted", reporter)
        if ignored:
            answer = {"accepted": len(events), "ignored_fields": ignored}
            return web.json_response(answer, status=202)
        return web.Response(body=_accepted(len(events)), status=202, content_type=JSON_TYPE)

    def _count(self, n: int, outcome: str, reporter: str) -> None:
        self.metrics.events(n, outcome, reporter)

    def _bad(self, exc: BadBody, reporter: str) -> web.Response:
        self._count(exc.bad_events, "invalid", reporter)
        said = (
            f"{exc.bad_events} bad event(s); none of the body was accepted"
            if exc.bad_events
            else "the body was not read; none of it was accepted"
        )
        problems = [p.as_json() for p in exc.problems]
        return web.json_response({"error": said, "problems": problems}, status=400)

    def _busy(self, why: str) -> web.Response:
        message = f"{why}: nothing was accepted; send the body again after Retry-After"
        return _refuse(503, message, **{"Retry-After": self.retry_after})

    async def _partitions(self) -> int | None:
        """The usage topic's partition count, asked of the broker once (None while it
        does not answer). A count gone stale after partitions were added only costs
        metering a forwarding hop. One question at a time, shared by every post that
        waits for it, and a failed one answers for PARTITIONS_RETRY_SECONDS: with the
        broker gone, each post asked on a thread of its own and a burst of 100 held
        the executor (and /healthz behind it) for ~30 s."""
        if self.partitions is not None:
            return self.partitions
        if time.monotonic() < self._partitions_failed_until:
            return None
        if self._asking is None:
            self._asking = asyncio.ensure_future(asyncio.to_thread(self.producer.partitions, 2.0))
        asking = self._asking
        try:
            self.partitions = await asyncio.shield(asking)
        except OSError as exc:
            if self._asking is asking:
                log.warning("the usage topic is not described: %s", exc)
                self._partitions_failed_until = time.monotonic() + PARTITIONS_RETRY_SECONDS
        finally:
            if self._asking is asking and asking.done():
                self._asking = None
        return self.partitions

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 while the broker describes the usage topic (asked at most once a
        HEALTH_SECONDS) and the producer can send; else 503, `broker` or `producer`
        saying why. A producer being replaced is asked each time (it costs nothing):
        the replica is ready again as soon as the new one is in place."""
        at, ok, detail = self._health
        if time.monotonic() - at > HEALTH_SECONDS:
            ok, detail = await self.producer.reachable()
            self._health = (time.monotonic(), ok, detail)
        broken = self.producer.unusable()
        body = {"status": "ok" if ok and broken is None else "unavailable", "broker": detail,
                "producer": broken or "ok", "waiting_events": self.producer.in_flight}  # fmt: skip
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def metrics_page(self, _request: web.Request) -> web.Response:
        page = generate_latest(REGISTRY)
        return web.Response(body=page, headers={"Content-Type": CONTENT_TYPE_LATEST})
